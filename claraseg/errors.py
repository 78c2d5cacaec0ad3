"""Typed errors a user can meet. Each message says what went wrong and what to do about it.

Every part of claraseg raises a subclass of :class:`ClarasegError`; the server maps them to 4xx
answers through :attr:`ClarasegError.http_status`, and the Slicer modules show ``str(error)``.
"""

from __future__ import annotations


class ClarasegError(Exception):
    """Base of all claraseg errors; ``str(err)`` is meant for the user."""

    http_status = 400
    code = "claraseg_error"


class ImageReadError(ClarasegError):
    """A file or folder could not be read as a medical image (missing, truncated, corrupt)."""

    code = "image_read_error"


class ImageWriteError(ClarasegError):
    """An image could not be written (unknown extension, unwritable folder)."""

    code = "image_write_error"


class DicomError(ImageReadError):
    """A DICOM folder is empty, holds several series without a choice, or has inconsistent slices."""

    code = "dicom_error"


class InvalidImageError(ClarasegError):
    """The voxels are unusable: wrong dimension, NaN/inf, absurd size or spacing, wrong dtype."""

    code = "invalid_image"


class GeometryMismatchError(ClarasegError):
    """Two images (e.g. an image and its label) do not share a voxel grid."""

    code = "geometry_mismatch"


class MaskDeltaError(ClarasegError):
    """A mask delta is corrupt, of an unknown version, or does not fit the volume it is pasted into."""

    code = "mask_delta_error"


class InvalidPointsError(ClarasegError):
    """Clicks or extreme points are missing, malformed or outside the volume."""

    code = "invalid_points"


class UnknownModelError(ClarasegError):
    """No model of that name is loaded."""

    http_status = 404
    code = "unknown_model"


class ModelError(ClarasegError):
    """A model bundle is malformed, or its weights do not fit its network."""

    code = "model_error"


class SessionNotFoundError(ClarasegError):
    """No session of that id exists (never opened, or closed)."""

    http_status = 404
    code = "session_not_found"


class SessionExpiredError(ClarasegError):
    """The session was closed after being idle; open a new one (the client does so by itself)."""

    http_status = 440  # the status NVIDIA AIAA used for an expired session
    code = "session_expired"


class ConfigError(ClarasegError):
    """A bundle or job configuration is invalid (bad ``_target_``, broken reference, bad search space)."""

    code = "config_error"


class TrainingDataError(ClarasegError):
    """Training data is unusable: missing files, mismatched grids, empty labels, too few cases."""

    code = "training_data_error"


class ApiVersionError(ClarasegError):
    """Client and server speak different API versions."""

    http_status = 409
    code = "api_version_mismatch"


class CancelledError(ClarasegError):
    """The operation was cancelled by the user."""

    http_status = 409
    code = "cancelled"


class ServerBusyError(ClarasegError):
    """The server's inference queue is full; try again in a moment (the answer says when)."""

    http_status = 503
    code = "server_busy"


class ServerUnavailableError(ClarasegError):
    """The server cannot be reached, timed out, or answered something that is not claraseg."""

    http_status = 502
    code = "server_unavailable"


class AuthenticationError(ClarasegError):
    """The request carries no token or a wrong one; pass the server's token (``--token``)."""

    http_status = 401
    code = "unauthorized"


class StorageFullError(ImageWriteError):
    """A file could not be written completely: the disk (or the quota, or the file size limit) is full.
    Nothing partial is kept; free space and save again."""

    http_status = 507
    code = "insufficient_storage"


class RequestTooLargeError(ClarasegError):
    """The request body exceeds the server's size limit."""

    http_status = 413
    code = "request_too_large"


class UnsupportedMediaTypeError(ClarasegError):
    """The request body is of a content type the route does not accept."""

    http_status = 415
    code = "unsupported_media_type"


class NotAvailableError(ClarasegError):
    """The operation exists in the API but is not available on this server (yet)."""

    http_status = 501
    code = "not_available"


class DatastoreNotFoundError(ClarasegError):
    """No image, label or label version of that id exists in the datastore."""

    http_status = 404
    code = "not_found"
