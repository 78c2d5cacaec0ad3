"""Read and write NIfTI, NRRD (including Slicer's .seg.nrrd) and DICOM series through SimpleITK."""

from __future__ import annotations

import errno
import gzip
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from claraseg.errors import ImageReadError, ImageWriteError, InvalidImageError, StorageFullError
from claraseg.io.dicom import list_dicom_series, read_dicom_series, write_dicom_series  # noqa: F401 (re-exported)
from claraseg.io.geometry import from_sitk, to_sitk
from claraseg.io.image import Image, LabelInfo, check_finite
from claraseg.io.itkerrors import first_line as _first_line

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".nhdr", ".mha", ".mhd")
LABEL_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.int64, np.uint64)


def extension(path: str | os.PathLike) -> str:
    """The image extension of a path, lower case, double ones included (``.nii.gz``, ``.seg.nrrd``)."""
    name = str(path).lower()
    for ext in IMAGE_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return Path(name).suffix


# ----- reading -----------------------------------------------------------------------------------
def read_image(path: str | os.PathLike, *, series_uid: str | None = None, label: bool = False,
               allow_nonfinite: bool = False, imageio: str | None = None, sidecar: bool = True) -> Image:
    """Read a NIfTI/NRRD/MetaImage file or a DICOM series folder into an :class:`Image`.

    Args:
        path: a file, or a folder of DICOM files.
        series_uid: for folders holding several DICOM series, the SeriesInstanceUID to read.
        label: read as a label map: the voxels must be integers. Files that carry label names (.seg.nrrd,
            an NRRD written by claraseg, a NIfTI with a ``.labels.json`` sidecar) are label maps anyway.
        allow_nonfinite: accept float voxels that are NaN or infinite (rejected by default).
        imageio: the SimpleITK reader to use (e.g. ``"NiftiImageIO"``); by default SimpleITK picks one from
            the file's name and content.
        sidecar: read label names from a NIfTI's ``.labels.json`` sidecar.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: no such file or folder")
    if p.is_dir():
        image = read_dicom_series(p, series_uid=series_uid)
    else:
        image = _read_file(p, imageio)
    side = label_sidecar_path(p) if p.is_file() and sidecar else None
    if side is not None and side.is_file():
        image.labels = read_labels_json(side)
    if label or image.labels or extension(p) == ".seg.nrrd" or segment_labels_from_metadata(image.metadata):
        image = as_label_map(image, source=str(p))
    elif not allow_nonfinite:
        try:
            check_finite(image)
        except InvalidImageError as e:
            raise InvalidImageError(f"{p}: {e}") from None
    return image


def label_sidecar_path(path: str | os.PathLike) -> Path | None:
    """Where label names of a NIfTI label map live: ``name.nii.gz`` -> ``name.labels.json`` (else None)."""
    path = Path(path)
    ext = extension(path)
    if ext not in (".nii", ".nii.gz"):
        return None
    return path.with_name(path.name[: -len(ext)] + ".labels.json")


def _read_file(p: Path, imageio: str | None = None) -> Image:
    if p.stat().st_size == 0:
        raise ImageReadError(f"{p}: the file is empty")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    if imageio:
        reader.SetImageIO(imageio)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise ImageReadError(
            f"{p}: not a readable image ({_first_line(e)}); supported: NIfTI (.nii, .nii.gz), NRRD (.nrrd, "
            ".seg.nrrd), MetaImage (.mha) or a folder of DICOM files"
        ) from None
    dim = reader.GetDimension()
    size = reader.GetSize()
    ncomp = reader.GetNumberOfComponents()
    if dim == 4 and size[3] == 1:
        pass  # a 4D file with a single volume is read as 3D below
    elif dim != 3:
        raise InvalidImageError(f"{p}: a {dim}D image of size {list(size)}; a 3D volume is required")
    if ncomp != 1 and extension(p) != ".seg.nrrd":
        raise InvalidImageError(f"{p}: {ncomp} components per voxel (colour or vector image); a scalar volume is required")
    if int(np.prod(size, dtype=np.int64)) > 1024**3:
        raise InvalidImageError(f"{p}: {list(size)} voxels is larger than the supported 1024^3")
    if extension(p) in (".nii", ".nii.gz"):
        _check_nifti_complete(p)  # ITK's NIfTI reader fills missing voxels with zeros without a word
    try:
        img = reader.Execute()
    except RuntimeError as e:
        raise ImageReadError(f"{p}: the file is truncated or corrupt ({_first_line(e)})") from None
    except MemoryError:
        raise InvalidImageError(f"{p}: {list(size)} voxels do not fit in memory; crop or downsample it first") from None
    if img.GetDimension() == 4:
        img = sitk.Extract(img, list(img.GetSize()[:3]) + [0], [0, 0, 0, 0])
    metadata = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    if img.GetNumberOfComponentsPerPixel() > 1:  # a .seg.nrrd with overlapping segments in layers
        raise InvalidImageError(
            f"{p}: the segmentation holds {img.GetNumberOfComponentsPerPixel()} layers (overlapping segments); "
            "export it from Slicer as a label map, or collapse the layers first"
        )
    image = from_sitk(img, metadata=metadata)
    image.metadata["source"] = str(p)
    return image


def _nifti_data_end(header: bytes) -> int | None:
    """Byte offset where a NIfTI-1/2 file's voxel data ends, from its header (None if not NIfTI)."""
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack_from(endian + "i", header, 0)
        if sizeof_hdr == 348 and len(header) >= 348:
            dims = struct.unpack_from(endian + "8h", header, 40)
            (bitpix,) = struct.unpack_from(endian + "h", header, 72)
            (offset,) = struct.unpack_from(endian + "f", header, 108)
        elif sizeof_hdr == 540 and len(header) >= 540:
            (bitpix,) = struct.unpack_from(endian + "h", header, 14)
            dims = struct.unpack_from(endian + "8q", header, 16)
            (offset,) = struct.unpack_from(endian + "q", header, 168)
        else:
            continue
        n = int(np.prod([max(1, int(d)) for d in dims[1:1 + max(0, min(int(dims[0]), 7))]], dtype=np.int64))
        return int(offset) + n * max(1, int(bitpix)) // 8
    return None


def _check_nifti_complete(p: Path) -> None:
    """Raise :class:`ImageReadError` when a NIfTI file (or its gzip stream) ends before its voxel data do."""
    truncated = f"{p}: the file is truncated (incomplete download or copy?); get the file again"
    try:
        with gzip.open(p, "rb") if extension(p) == ".nii.gz" else open(p, "rb") as f:
            end = _nifti_data_end(f.read(540))
            if end is None:
                return
            f.seek(0)
            total = 0
            while True:
                chunk = f.read(1 << 24)
                if not chunk:
                    break
                total += len(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile, struct.error):
        raise ImageReadError(truncated) from None
    if total < end:
        raise ImageReadError(f"{truncated} ({total:,} of {end:,} bytes)")


def as_label_map(image: Image, source: str = "label") -> Image:
    """Check that voxels are integers and collect label names (Slicer .seg.nrrd segments, JSON sidecars)."""
    a = image.array
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise InvalidImageError(f"{source}: a label map must hold whole numbers; found NaN or infinite values")
        frac = a != np.round(a)
        if frac.any():
            raise InvalidImageError(
                f"{source}: a label map must hold whole numbers; {int(frac.sum()):,} voxels are fractional "
                f"(e.g. {float(a[frac][0]):g}). Is it a probability map or an intensity image? Threshold it, or "
                "read it as an image"
            )
        if a.min() < 0 or a.max() > 65535:
            raise InvalidImageError(f"{source}: label values must lie in 0..65535, found {a.min()}..{a.max()}")
        a = a.astype(np.uint16 if a.max() > 255 else np.uint8)
    elif not np.issubdtype(a.dtype, np.integer):
        raise InvalidImageError(f"{source}: a label map must hold integers, got {a.dtype}")
    labels = dict(image.labels) or segment_labels_from_metadata(image.metadata)
    meta = dict(image.metadata, is_label=True)
    return Image(a, image.origin, image.spacing, image.direction, labels, meta)


def segment_labels_from_metadata(meta: dict) -> dict[int, LabelInfo]:
    """Label names and colours from Slicer's .seg.nrrd keys (``SegmentN_Name``, ``SegmentN_LabelValue``...)."""
    labels: dict[int, LabelInfo] = {}
    n = 0
    while f"Segment{n}_Name" in meta or f"Segment{n}_ID" in meta:
        name = meta.get(f"Segment{n}_Name") or meta.get(f"Segment{n}_ID") or f"Segment_{n + 1}"
        value = int(meta.get(f"Segment{n}_LabelValue", n + 1))
        color = None
        if f"Segment{n}_Color" in meta:
            try:
                c = tuple(float(v) for v in meta[f"Segment{n}_Color"].split())
                color = c if len(c) == 3 else None
            except ValueError:
                color = None
        labels[value] = LabelInfo(name, color)
        n += 1
    if not labels and "claraseg_labels" in meta:
        try:
            labels = {int(k): LabelInfo(v["name"], tuple(v["color"]) if v.get("color") else None)
                      for k, v in json.loads(meta["claraseg_labels"]).items()}
        except (ValueError, KeyError, TypeError):
            labels = {}
    return labels


def read_labels_json(path: str | os.PathLike) -> dict[int, LabelInfo]:
    """Read a ``labels.json`` sidecar: ``{"1": "spleen"}`` or ``{"1": {"name": "spleen", ...}}``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ImageReadError(f"{path}: cannot read label names ({e})") from None
    if isinstance(data, dict) and "labels" in data and isinstance(data["labels"], dict):
        data = data["labels"]
    out = {}
    for k, v in data.items():
        name = v if isinstance(v, str) else v.get("name", str(k))
        color = None if isinstance(v, str) or not v.get("color") else tuple(v["color"])
        out[int(k)] = LabelInfo(name, color)
    return out


# ----- writing -------------------------------------------------------------------------------------
#: Extensions :func:`write_image` writes (single-file formats, so the write can be atomic).
WRITE_EXTENSIONS = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha")


def write_image(image: Image, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write atomically (temporary file in the same folder, then rename) as NIfTI, NRRD, .seg.nrrd or .mha.

    A .seg.nrrd gets Slicer's segment metadata (names, colours, label values) from ``image.labels``; an
    NRRD or MetaImage keeps them in a ``claraseg_labels`` field; a NIfTI in a ``.labels.json`` sidecar.
    """
    path = Path(path)
    ext = extension(path)
    if ext not in WRITE_EXTENSIONS:
        raise ImageWriteError(f"{path}: unknown image extension {ext!r}; use one of {', '.join(WRITE_EXTENSIONS)}")
    if not path.parent.is_dir():
        raise ImageWriteError(f"{path.parent}: folder does not exist")
    if ext in (".nii", ".nii.gz") and image.array.dtype.kind == "f" and not np.isfinite(image.array).all():
        raise ImageWriteError(f"{path}: NIfTI would silently store the image's NaN or infinite voxels as 0; "
                              "write .nrrd, or replace them first")
    img = to_sitk(image)
    if image.labels:
        if ext == ".seg.nrrd":
            for key, value in _segment_metadata(image).items():
                img.SetMetaData(key, value)
        elif ext in (".nrrd", ".mha"):
            img.SetMetaData("claraseg_labels", json.dumps(
                {str(k): {"name": v.name, "color": list(v.color) if v.color else None} for k, v in image.labels.items()}))
    try:
        with atomic_path(path, suffix=ext) as tmp:
            sitk.WriteImage(img, str(tmp), useCompression=compress)
            _check_written(tmp, path)
    except RuntimeError as e:
        raise _write_error(path, e) from None
    side = label_sidecar_path(path)
    if side is not None and not image.labels and side.exists():
        side.unlink()  # a stale sidecar would turn the new file into a label map when read
    if image.labels and side is not None:
        # NIfTI has no room for names: keep them in a sidecar next to the file.
        write_text_atomic(side, json.dumps(
            {str(k): {"name": v.name, "color": list(v.color) if v.color else None} for k, v in image.labels.items()},
            indent=1))
    return path


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


#: Read once at import: os.umask can only be read by setting it, which would race with other threads.
_UMASK = _read_umask()


def _chmod_default(path: str) -> None:
    """Give a temporary file (created 0600) the permissions a plain ``open`` would (0666 minus umask)."""
    os.chmod(path, 0o666 & ~_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path in ``path``'s folder to write the file to; when the block ends it is flushed to the
    disk and renamed over ``path`` (then the folder is flushed), so readers never see half a file. On an
    error the temporary file is removed and nothing is replaced; a failed write raises :class:`ImageWriteError`
    (:class:`StorageFullError` when the disk is full). ``suffix`` ends the temporary name (writers that
    choose the format from it; torch.save needs one)."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        _fsync(tmp)
        _chmod_default(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically and durably (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a binary file atomically and durably (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _write_error(path: Path, e: BaseException) -> ImageWriteError:
    """The typed error of a failed write: :class:`StorageFullError` when space ran out."""
    text = str(e).lower()
    if getattr(e, "errno", None) in _FULL or isinstance(e, StorageFullError) or any(
            w in text for w in ("no space", "file too large", "quota", "incomplete")):
        return StorageFullError(f"{path}: the disk is full (or a size limit was reached); nothing was saved. Free "
                                "some space and save again")
    return ImageWriteError(f"{path}: cannot write ({_first_line(e) if isinstance(e, RuntimeError) else e})")


def _check_written(tmp: Path, final: Path) -> None:
    """Raise :class:`StorageFullError` when a file just written is not complete (a writer that did not
    report a failed write, e.g. on a full disk)."""
    try:
        if extension(final) in (".nii", ".nii.gz"):
            _check_nifti_complete(tmp)
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(tmp))
            reader.ReadImageInformation()
    except (ImageReadError, RuntimeError):
        raise StorageFullError(f"{final}: the file was written incompletely") from None


def _fsync(path: str | os.PathLike) -> None:
    """Flush a file or a folder (the rename of a file in it) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _segment_metadata(image: Image) -> dict[str, str]:
    """Slicer's segmentation NRRD fields for a single-layer label map."""
    k, j, i = image.array.shape
    meta = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    for n, (value, info) in enumerate(sorted(image.labels.items())):
        color = info.color or _default_color(value)
        meta.update({
            f"Segment{n}_ID": f"Segment_{value}",
            f"Segment{n}_Name": info.name,
            f"Segment{n}_NameAutoGenerated": "0",
            f"Segment{n}_Color": " ".join(f"{c:.6f}" for c in color),
            f"Segment{n}_ColorAutoGenerated": "0",
            f"Segment{n}_LabelValue": str(value),
            f"Segment{n}_Layer": "0",
            f"Segment{n}_Extent": f"0 {i - 1} 0 {j - 1} 0 {k - 1}",
            f"Segment{n}_Tags": "|",
        })
    return meta


def _default_color(value: int) -> tuple[float, float, float]:
    """A stable, distinct colour per label value (golden-ratio hue walk)."""
    import colorsys

    return colorsys.hsv_to_rgb((value * 0.618034) % 1.0, 0.65, 0.95)
