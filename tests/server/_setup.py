"""Which backend the server tests host: the engine's LocalBackend with tiny random-weight bundles when
the engine is installed, else the stand-in backend (tests/server/standin.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

TOKEN = "test-token-0123456789"


def backend_setup(tmp: Path) -> tuple[list[str], dict[str, str], Callable[[], object], str]:
    """(``claraseg serve`` arguments, environment, in-process factory of the same backend, description)."""
    try:
        from claraseg.engine import LocalBackend
        from claraseg.models.testing import make_tiny_bundle
    except ImportError:
        import standin

        env = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        return ["--backend", "standin:make"], env, standin.make, "stand-in backend (claraseg.engine not installed)"
    from claraseg.backend import MODEL_KINDS

    models = tmp / "models"
    models.mkdir(exist_ok=True)
    for kind in MODEL_KINDS:
        if not (models / kind).exists():
            make_tiny_bundle(kind, models / kind)
    return ["--models", str(models)], {}, lambda: LocalBackend(models, device="cpu"), "LocalBackend, tiny bundles"
