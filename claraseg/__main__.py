import sys

from claraseg.cli import main

sys.exit(main())
