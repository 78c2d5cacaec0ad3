"""The inference engine: :class:`LocalBackend` opens images once and turns clicks, extreme points and
auto-segmentation requests into :class:`~claraseg.io.MaskDelta` results (DESIGN.md, "One interface")."""

from claraseg.engine.backend import LocalBackend, pick_device
from claraseg.engine.session import LocalSession

__all__ = ["LocalBackend", "LocalSession", "pick_device"]
