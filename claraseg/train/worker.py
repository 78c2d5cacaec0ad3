"""The job process: ``python -m claraseg.train.worker WORKDIR`` (or under ``torchrun`` for DDP).

Started by :meth:`claraseg.train.job.FineTuneJob.start`; never run inside a GUI or server event loop.
Exit codes: 0 completed, 1 internal error, 2 bad input or config, 3 cancelled.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m claraseg.train.worker", description=__doc__)
    parser.add_argument("workdir", help="the job folder holding job.json")
    args = parser.parse_args(argv)
    from claraseg.train.runner import Runner

    return Runner(args.workdir).run()


if __name__ == "__main__":
    sys.exit(main())
