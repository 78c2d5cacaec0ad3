"""claraseg: the engine behind Clara for 3D Slicer (pure Python, no Slicer imports)."""

from claraseg.backend import API_VERSION, Backend, ModelDescriptor, Session
from claraseg.errors import ClarasegError
from claraseg.io import Image, LabelInfo, MaskDelta, read_image, write_image

__version__ = "0.1.0"

__all__ = ["API_VERSION", "Backend", "ClarasegError", "Image", "LabelInfo", "MaskDelta", "ModelDescriptor",
           "Session", "__version__", "read_image", "write_image"]
