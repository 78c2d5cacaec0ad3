"""The on-disk datastore: images, and versioned labels with names and an author/time record.

Layout under the root folder::

    images/<image_id>/image.nii.gz          the image (written atomically)
    images/<image_id>/info.json             name, author, time, size, geometry
    labels/<image_id>/<tag>/v0001.nii.gz    label versions, never overwritten
    labels/<image_id>/<tag>/v0001.json      the version's record (author, time, label names, sha256)
    .locks/<image_id>.lock                  per-image lock for writers (threads and processes)

A label version is written in two atomic steps, voxels first, record second; a version without its
record (a crash in between) is invisible and its number is never reused. Every id is checked against
:data:`ID_PATTERN` and every resolved path must stay inside the root.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from claraseg.errors import ClarasegError, DatastoreNotFoundError, GeometryMismatchError, InvalidImageError
from claraseg.io import Image, LabelInfo, read_image, read_labels_json, write_image, write_text_atomic

#: Image ids, label tags and session ids: letters, digits, ``_ . -``; no leading dot; at most 128 characters.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
DEFAULT_TAG = "final"
#: A label version's files: ``v0001.nii.gz``, ``v0001.json``, ``v12345.labels.json`` (four digits or more).
VERSION_FILE = re.compile(r"^v([0-9]{4,9})\.")
#: Temporary files of writes older than this are left over from a killed process and removed on start.
STALE_TMP_S = 600.0


class InvalidIdError(ClarasegError):
    """An id or tag with characters that could name a path outside the datastore."""

    code = "invalid_id"


class DatastoreConflictError(ClarasegError):
    """An image of that id already exists."""

    http_status = 409
    code = "conflict"


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a safe id, else raise :class:`InvalidIdError` naming the rule."""
    if not isinstance(value, str) or not ID_PATTERN.match(value) or ".." in value:
        shown = value if isinstance(value, str) and len(value) <= 80 else f"{str(value)[:80]}..."
        raise InvalidIdError(
            f"invalid {what} {shown!r}: use 1-128 letters, digits, '_', '.' or '-', not starting with '.' "
            "and without '..'"
        )
    return value


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _geometry(image: Image) -> dict[str, Any]:
    return {
        "size_ijk": list(image.size_ijk),
        "dtype": str(image.array.dtype),
        "origin": [round(float(v), 6) for v in image.origin],
        "spacing": [round(float(v), 6) for v in image.spacing],
        "direction": [round(float(v), 8) for v in image.direction.ravel()],
    }


class Datastore:
    """Images and versioned labels in a folder; safe for concurrent writers (threads and processes)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.is_new = not (self.root / "images").is_dir()
        for sub in ("images", "labels", ".locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._thread_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.removed_tmp = self.remove_stale_tmp()

    def remove_stale_tmp(self, older_than: float = STALE_TMP_S) -> int:
        """Delete ``.tmp-*`` files (interrupted atomic writes) older than ``older_than`` seconds."""
        n = 0
        now = time.time()
        for sub in ("images", "labels"):
            for p in (self.root / sub).rglob(".tmp-*"):
                try:
                    if p.is_file() and now - p.stat().st_mtime > older_than:
                        p.unlink()
                        n += 1
                except OSError:
                    pass
        return n

    # ----- paths and locks ---------------------------------------------------------------------
    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise InvalidIdError(f"the id names a path outside the datastore ({path.name!r})")
        return resolved

    def _image_dir(self, image_id: str) -> Path:
        return self._inside(self.root / "images" / check_id(image_id, "image id"))

    def _tag_dir(self, image_id: str, tag: str) -> Path:
        return self._inside(self.root / "labels" / check_id(image_id, "image id") / check_id(tag, "label tag"))

    def _lock(self, image_id: str):
        with self._guard:
            tl = self._thread_locks.setdefault(image_id, threading.Lock())
        return _BothLocks(tl, FileLock(str(self.root / ".locks" / f"{image_id}.lock"), timeout=60))

    # ----- images -------------------------------------------------------------------------------
    def has_image(self, image_id: str) -> bool:
        return (self._image_dir(image_id) / "info.json").is_file()

    def add_image(self, image_id: str, image: Image, *, author: str = "", name: str = "",
                  info: dict[str, Any] | None = None) -> dict[str, Any]:
        """Store a new image under ``image_id``; raises :class:`DatastoreConflictError` if the id is taken."""
        d = self._image_dir(image_id)
        with self._lock(image_id):
            if (d / "info.json").is_file():
                raise DatastoreConflictError(f"image {image_id!r} already exists in the datastore; choose another id")
            d.mkdir(parents=True, exist_ok=True)
            try:
                write_image(image.with_array(image.array, labels={}), d / "image.nii.gz")
                record = {"id": image_id, "name": name or image_id, "author": author, "time": _now(),
                          **_geometry(image), "info": dict(info or {})}
                write_text_atomic(d / "info.json", json.dumps(record, indent=1))
            except BaseException:
                shutil.rmtree(d, ignore_errors=True)  # nothing of a failed upload stays
                raise
        return record

    def image_info(self, image_id: str) -> dict[str, Any]:
        p = self._image_dir(image_id) / "info.json"
        if not p.is_file():
            raise DatastoreNotFoundError(f"no image {image_id!r} in the datastore; GET /datastore/ lists them")
        return json.loads(p.read_text())

    def image_path(self, image_id: str) -> Path:
        self.image_info(image_id)
        return self._image_dir(image_id) / "image.nii.gz"

    def read_image(self, image_id: str) -> Image:
        return read_image(self.image_path(image_id))

    def list_images(self) -> list[str]:
        return sorted(p.parent.name for p in (self.root / "images").glob("*/info.json"))

    # ----- labels -------------------------------------------------------------------------------
    def _versions(self, tag_dir: Path) -> list[int]:
        """Committed versions (voxels and record present), ascending."""
        out = []
        for rec in tag_dir.glob("v*.json"):
            m = VERSION_FILE.match(rec.name)
            if m and rec.name == f"v{m.group(1)}.json" and (tag_dir / f"v{int(m.group(1)):04d}.nii.gz").is_file():
                out.append(int(m.group(1)))
        return sorted(out)

    def save_label(self, image_id: str, label: Image, *, tag: str = DEFAULT_TAG, author: str = "",
                   label_names: dict[int, str] | None = None, info: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write a new version of the image's label under ``tag`` and return its record.

        The label must lie on the image's voxel grid (:class:`GeometryMismatchError` otherwise) and hold
        integer values.
        """
        meta = self.image_info(image_id)
        ref = Image(np.zeros((1, 1, 1), np.uint8), meta["origin"], meta["spacing"], np.reshape(meta["direction"], (3, 3)))
        ref_shape = tuple(meta["size_ijk"][::-1])
        a = label.array
        if not np.issubdtype(a.dtype, np.integer):
            raise InvalidImageError(f"a label map must hold integers, got {a.dtype}")
        if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise InvalidImageError(f"label values must lie in 0..65535, found {int(a.min())}..{int(a.max())}")
        if tuple(a.shape) != ref_shape:
            raise GeometryMismatchError(
                f"the label's size (i, j, k) {list(label.size_ijk)} differs from the image's {meta['size_ijk']}; "
                "a label must lie on its image's voxel grid"
            )
        # Compare origin/spacing/direction on 1-voxel stand-ins: the sizes already match.
        ref.check_same_grid(Image(np.zeros((1, 1, 1), np.uint8), label.origin, label.spacing, label.direction), "label")
        names = {int(k): str(v) for k, v in (label_names or {}).items()} or {
            int(k): v.name for k, v in label.labels.items()}
        out = label.with_array(a.astype(np.uint16 if int(a.max(initial=0)) > 255 else np.uint8),
                               labels={k: LabelInfo(v) for k, v in names.items()})
        tag_dir = self._tag_dir(image_id, tag)
        with self._lock(image_id):
            tag_dir.mkdir(parents=True, exist_ok=True)
            taken = [int(m.group(1)) for p in tag_dir.glob("v*") if (m := VERSION_FILE.match(p.name))]
            n = max(taken, default=0) + 1
            path = write_image(out, tag_dir / f"v{n:04d}.nii.gz")
            record = {
                "image": image_id, "tag": tag, "version": n, "author": author, "time": _now(),
                "label_names": {str(k): v for k, v in sorted(names.items())},
                "values": [int(v) for v in np.unique(out.array) if v],
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "info": dict(info or {}),
            }
            try:
                write_text_atomic(tag_dir / f"v{n:04d}.json", json.dumps(record, indent=1))
            except BaseException:  # no voxels without their record (the number stays taken by nothing)
                for p in tag_dir.glob(f"v{n:04d}.*"):
                    p.unlink(missing_ok=True)
                raise
        return record

    def label_record(self, image_id: str, tag: str = DEFAULT_TAG, version: int | None = None) -> dict[str, Any]:
        """The record of a label version (the latest without ``version``)."""
        self.image_info(image_id)
        tag_dir = self._tag_dir(image_id, tag)
        versions = self._versions(tag_dir) if tag_dir.is_dir() else []
        if not versions:
            raise DatastoreNotFoundError(f"image {image_id!r} has no label tagged {tag!r}")
        n = versions[-1] if version is None else int(version)
        if n not in versions:
            raise DatastoreNotFoundError(f"label {image_id!r}/{tag!r} has no version {n}; versions: {versions}")
        return json.loads((tag_dir / f"v{n:04d}.json").read_text())

    def label_path(self, image_id: str, tag: str = DEFAULT_TAG, version: int | None = None) -> Path:
        rec = self.label_record(image_id, tag, version)
        return self._tag_dir(image_id, tag) / f"v{rec['version']:04d}.nii.gz"

    def label_versions(self, image_id: str, tag: str = DEFAULT_TAG) -> list[dict[str, Any]]:
        self.image_info(image_id)
        tag_dir = self._tag_dir(image_id, tag)
        return [json.loads((tag_dir / f"v{n:04d}.json").read_text()) for n in self._versions(tag_dir)] \
            if tag_dir.is_dir() else []

    def label_tags(self, image_id: str) -> list[str]:
        d = self.root / "labels" / image_id
        return sorted(t.name for t in d.iterdir() if t.is_dir() and self._versions(t)) if d.is_dir() else []

    # ----- summaries ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """MONAI Label's datastore summary: totals and label counts per tag."""
        tags: dict[str, int] = {}
        completed = 0
        for image_id in self.list_images():
            t = self.label_tags(image_id)
            completed += bool(t)
            for tag in t:
                tags[tag] = tags.get(tag, 0) + 1
        return {"total": len(self.list_images()), "completed": completed, "label_tags": tags}

    def listing(self) -> dict[str, Any]:
        """Every image with its info and the latest record of each label tag."""
        objects = {}
        for image_id in self.list_images():
            objects[image_id] = {
                "image": self.image_info(image_id),
                "labels": {tag: _monai_label(self.label_record(image_id, tag)) for tag in self.label_tags(image_id)},
            }
        return {"name": self.root.name, "objects": objects}

    # ----- sample data --------------------------------------------------------------------------
    def preload_sample(self, data_dir: str | Path) -> list[str]:
        """Copy the sample CT (and its reference label as tag ``original``) into a new datastore."""
        src = Path(data_dir) / "ct_abdomen_3mm"
        if not (src / "image.nii.gz").is_file():
            return []
        image_id = "ct_abdomen_3mm"
        if self.has_image(image_id):
            return [image_id]
        d = self._image_dir(image_id)
        d.mkdir(parents=True, exist_ok=True)
        image = read_image(src / "image.nii.gz")
        shutil.copyfile(src / "image.nii.gz", d / ".tmp-image.nii.gz")
        (d / ".tmp-image.nii.gz").replace(d / "image.nii.gz")
        write_text_atomic(d / "info.json", json.dumps({
            "id": image_id, "name": "sample abdominal CT (TotalSegmentator example)", "author": "claraseg",
            "time": _now(), **_geometry(image), "info": {"source": str(src)}}, indent=1))
        if (src / "label.nii.gz").is_file():
            label = read_image(src / "label.nii.gz", label=True)
            names = {k: v.name for k, v in read_labels_json(src / "labels.json").items()} \
                if (src / "labels.json").is_file() else {}
            self.save_label(image_id, label, tag="original", author="TotalSegmentator", label_names=names)
        return [image_id]


def _monai_label(record: dict[str, Any]) -> dict[str, Any]:
    """A label record as MONAI Label's clients read it too: ``info.params.label_names`` is {name: value}."""
    info = dict(record.get("info") or {})
    params = info.get("params") if isinstance(info.get("params"), dict) else {}
    names = {str(v): int(k) for k, v in (record.get("label_names") or {}).items()}
    info["params"] = {**params, "label_names": names}
    return {**record, "info": info}


class _BothLocks:
    """A thread lock then a file lock: threads of this process and other processes both wait."""

    def __init__(self, thread_lock: threading.Lock, file_lock: FileLock) -> None:
        self._t, self._f = thread_lock, file_lock

    def __enter__(self) -> None:
        self._t.acquire()
        try:
            self._f.acquire()
        except BaseException:
            self._t.release()
            raise

    def __exit__(self, *exc) -> None:
        self._f.release()
        self._t.release()
