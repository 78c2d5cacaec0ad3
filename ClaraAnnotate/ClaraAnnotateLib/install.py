"""What the local mode needs in Slicer's Python, and how to install it (on an explicit click only).

The remote mode needs nothing beyond what Slicer ships (numpy, SimpleITK, requests). The local mode
runs the engine in Slicer and needs PyTorch and MONAI: PyTorch through the PyTorch extension's
installer when it is there (it picks the CUDA build matching the driver), otherwise pip.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata

#: Local-mode requirements beyond Slicer's bundled packages (lower bounds only: never pin in Slicer).
TORCH_REQUIREMENT = "torch>=2.2"
#: onnx + onnxruntime: the interactive models' network forward on ONNX Runtime (the engine falls back to torch
#: without them; claraseg/runtimes).
LOCAL_REQUIREMENTS = ("monai>=1.4", "scipy>=1.10", "scikit-image>=0.22", "nibabel>=5", "pydantic>=2.5",
                      "onnx>=1.16", "onnxruntime>=1.18")
#: What each tool of the local mode imports beyond torch and MONAI (auto-segmentation: MONAI's
#: ``Orientationd`` needs nibabel), and the requirement that brings it.
TOOL_MODULES = {"auto-segmentation": (("nibabel", "nibabel>=5"),)}
#: Import names of distributions whose import name differs.
IMPORT_NAMES = {"scikit-image": "skimage", "pyyaml": "yaml"}


@dataclass(frozen=True)
class InstallStep:
    """One step of the install plan: ``via`` is ``pytorchutils`` or ``pip``."""

    requirement: str
    via: str


def requirement_name(requirement: str) -> str:
    """``monai[nibabel]>=1.4`` -> ``monai``."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not m:
        raise ValueError(f"not a requirement: {requirement!r}")
    return m.group(1).lower()


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for p in re.split(r"[.+-]", v):
        if not p.isdigit():
            break
        parts.append(int(p))
    return tuple(parts)


def is_satisfied(requirement: str, version_of: Callable[[str], str | None] | None = None) -> bool:
    """True when the distribution is installed at a version meeting a ``>=`` bound (other specifiers:
    installed is enough)."""
    name = requirement_name(requirement)
    version_of = version_of or installed_version
    have = version_of(name)
    if have is None:
        return False
    m = re.search(r">=\s*([0-9][0-9.]*)", requirement)
    return m is None or _version_tuple(have) >= _version_tuple(m.group(1))


def installed_version(name: str) -> str | None:
    """Installed version of a distribution, or None (also when metadata exists but the import fails)."""
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
    return version if importlib.util.find_spec(IMPORT_NAMES.get(name, name).replace("-", "_")) else None


def missing_for(tool: str) -> list[str]:
    """Requirements of a local-mode tool whose modules cannot be imported (empty: the tool can run)."""
    missing = []
    for module, requirement in TOOL_MODULES.get(tool, ()):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(requirement)
    return missing


def plan_install(have_pytorch_utils: bool, version_of: Callable[[str], str | None] | None = None,
                 extra: Sequence[str] = ()) -> list[InstallStep]:
    """The steps still needed for local mode, in order (torch first: MONAI must not pull a CPU torch)."""
    steps = []
    if not is_satisfied(TORCH_REQUIREMENT, version_of):
        steps.append(InstallStep(TORCH_REQUIREMENT, "pytorchutils" if have_pytorch_utils else "pip"))
    for req in list(LOCAL_REQUIREMENTS) + list(extra):
        if not is_satisfied(req, version_of):
            steps.append(InstallStep(req, "pip"))
    return steps


def describe_plan(steps: Sequence[InstallStep]) -> str:
    """One line for the confirmation dialog."""
    if not steps:
        return "PyTorch and MONAI are installed: local mode is ready."
    names = ", ".join(s.requirement for s in steps)
    big = " PyTorch is a large download (up to several GB with CUDA)." if any(
        requirement_name(s.requirement) == "torch" for s in steps) else ""
    return f"Local mode will install into Slicer's Python: {names}.{big} Slicer may need a restart afterwards."
