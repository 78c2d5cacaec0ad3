"""Fine-tune jobs on MONAI bundles: the job process, events, checkpoints and resume, datasets (Smart
Cache), DDP, publishing, MMAR translation. See docs/training.md.

- :class:`~claraseg.train.job.FineTuneJob`, :class:`~claraseg.train.job.JobManager`: the API callers use.
- :mod:`~claraseg.train.runner`: the training loop inside the job process (:mod:`~claraseg.train.worker`).
- :mod:`~claraseg.train.config`, :mod:`~claraseg.train.defaults`, :mod:`~claraseg.train.mmar`: configs.
- :mod:`~claraseg.train.data`: datalists, label-name mapping, geometry checks, the held-out split.
- :mod:`~claraseg.train.events`: the JSON-lines events and their summary.
"""

from claraseg.train.events import FINAL_STATES, STATES, read_events, summarize
from claraseg.train.job import FineTuneJob, JobManager, JobStateError

__all__ = ["FINAL_STATES", "STATES", "FineTuneJob", "JobManager", "JobStateError", "read_events", "summarize"]
