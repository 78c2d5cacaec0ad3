"""Where the web app's images come from and its labels go: a datastore folder or an annotation server.

``FolderSource`` reads and writes a datastore folder directly (``claraseg.server.datastore.Datastore``,
safe beside a running server); ``ServerSource`` goes through the server's ``/datastore`` API with the
client's token. Both hand images to Slicer as local NIfTI files and take labels as claraseg images.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from claraseg.io import Image, write_image

#: Label tag the web app saves under (the tag the Slicer module and MONAI Label use for final labels).
DEFAULT_TAG = "final"


class FolderSource:
    """A datastore folder on this machine."""

    def __init__(self, root: str | os.PathLike, sample_data: str | os.PathLike | None = None) -> None:
        from claraseg.server.datastore import Datastore

        self.store = Datastore(root)
        if sample_data is not None and self.store.is_new:
            self.store.preload_sample(sample_data)
        self.description = f"datastore {self.store.root}"

    def images(self) -> list[dict[str, Any]]:
        return [{"id": i, "name": self.store.image_info(i).get("name", i)} for i in self.store.list_images()]

    def image_file(self, image_id: str) -> Path:
        return self.store.image_path(image_id)

    def save_label(self, image_id: str, label: Image, names: dict[int, str], tag: str = DEFAULT_TAG,
                   author: str = "") -> dict[str, Any]:
        return self.store.save_label(image_id, label, tag=tag, author=author, label_names=names,
                                     info={"client": "Clara Annotate Web"})

    def add_image(self, image_id: str, image: Image, name: str = "") -> dict[str, Any]:
        return self.store.add_image(image_id, image, name=name, author="Clara Annotate Web")


class ServerSource:
    """The datastore of an annotation server (``RemoteBackend``'s ``/datastore`` calls)."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.description = f"datastore of {backend.url}"
        self._dir = tempfile.TemporaryDirectory(prefix="clara-web-")

    def images(self) -> list[dict[str, Any]]:
        objects = self.backend.datastore(full=True).get("objects", {})
        return [{"id": i, "name": (o.get("image") or {}).get("name", i)} for i, o in sorted(objects.items())]

    def image_file(self, image_id: str) -> Path:
        from claraseg.server.datastore import check_id

        image = self.backend.download_image(check_id(image_id, "image id"))
        return write_image(image, Path(self._dir.name) / f"{image_id}.nii.gz")

    def save_label(self, image_id: str, label: Image, names: dict[int, str], tag: str = DEFAULT_TAG,
                   author: str = "") -> dict[str, Any]:
        return self.backend.save_label(image_id, label, tag=tag, author=author, label_names=names)

    def add_image(self, image_id: str, image: Image, name: str = "") -> dict[str, Any]:
        return self.backend.upload_image(image, image_id, author="Clara Annotate Web")
