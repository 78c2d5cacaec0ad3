"""The HTTP client: :class:`RemoteBackend` implements the :class:`~claraseg.backend.Backend` interface
against ``claraseg serve``; it needs only numpy and requests."""

from claraseg.client.remote import RemoteBackend, RemoteSession

__all__ = ["RemoteBackend", "RemoteSession"]
