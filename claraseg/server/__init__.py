"""The annotation server: a FastAPI app hosting any :class:`~claraseg.backend.Backend` (``claraseg serve``)."""

from claraseg.server.app import create_app
from claraseg.server.datastore import Datastore
from claraseg.server.settings import ServerSettings

__all__ = ["Datastore", "ServerSettings", "create_app"]
