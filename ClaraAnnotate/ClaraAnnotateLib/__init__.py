"""Pure-Python helpers of the ClaraAnnotate module: importable and tested without Slicer.

``geometry`` (matrices, voxel indices, slice axes), ``segments`` (label <-> segment, object masks),
``settings`` (backend choice, server history), ``worker`` (background task queue), ``annotator``
(backend + session controller), ``install`` (local-mode requirements). ``nodes`` is the one module
that needs Slicer: the MRML side of the conversions, imported only inside Slicer.
"""
