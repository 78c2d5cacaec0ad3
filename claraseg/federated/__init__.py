"""Federated fine-tuning across sites on NVIDIA FLARE, optionally with homomorphic encryption.
See docs/federated.md.

- :mod:`~claraseg.federated.spec`: the job spec (plain data, validated).
- :mod:`~claraseg.federated.job`: NVFlare job folders: create, simulate, export (provisioning).
- :mod:`~claraseg.federated.nvflare_app`: the NVFlare components (site executor, persistor, recorder, finalize).
- :mod:`~claraseg.federated.local`: one site's round, through the project's fine-tune jobs.
- :mod:`~claraseg.federated.events`: the job's events and their summary.
"""

from claraseg.federated.spec import FederatedSpec, check_plain

__all__ = ["FederatedSpec", "check_plain"]
