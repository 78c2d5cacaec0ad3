"""Read and write NIfTI, NRRD (including Slicer's .seg.nrrd) and DICOM series through SimpleITK."""

from __future__ import annotations

import gzip
import json
import os
import re
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from claraseg.errors import DicomError, ImageReadError, ImageWriteError, InvalidImageError
from claraseg.io.geometry import from_sitk, to_sitk
from claraseg.io.image import Image, LabelInfo, check_finite

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
               allow_nonfinite: bool = False) -> Image:
    """Read a NIfTI/NRRD/MetaImage file or a DICOM series folder into an :class:`Image`.

    Args:
        path: a file, or a folder of DICOM files.
        series_uid: for folders holding several DICOM series, the SeriesInstanceUID to read.
        label: read as a label map: the voxels must be integers. Files that carry label names (.seg.nrrd,
            an NRRD written by claraseg, a NIfTI with a ``.labels.json`` sidecar) are label maps anyway.
        allow_nonfinite: accept float voxels that are NaN or infinite (rejected by default).
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: no such file or folder")
    if p.is_dir():
        image = read_dicom_series(p, series_uid=series_uid)
    else:
        image = _read_file(p)
    side = label_sidecar_path(p) if p.is_file() else None
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


def _read_file(p: Path) -> Image:
    if p.stat().st_size == 0:
        raise ImageReadError(f"{p}: the file is empty")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
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


def _first_line(e: Exception) -> str:
    """The useful part of a SimpleITK/ITK error message (no source locations, prefixes or repeated paths)."""
    # "Reason:" lines repeat a stale errno ("No such file or directory" for a truncated file): drop them.
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith("Reason:")]
    # ITK messages start with a file:line prefix; the description is the most useful line.
    text = next((ln.split("Description:", 1)[1].strip() for ln in lines if "Description:" in ln),
                lines[-1] if lines else type(e).__name__)
    text = re.sub(r"^(s?itk::ERROR:|ITK ERROR:)\s*(\w+\(0x[0-9a-f]+\):)?", "", text).strip()
    if "Unable to determine ImageIO reader" in text:
        return "the contents are not in any image format SimpleITK knows"
    return text


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


# ----- DICOM ---------------------------------------------------------------------------------------
def list_dicom_series(folder: str | os.PathLike) -> dict[str, list[str]]:
    """SeriesInstanceUID -> file names (sorted by slice position) of every series in a folder tree."""
    folder = str(folder)
    series: dict[str, list[str]] = {}
    dirs = [folder] + [str(d) for d in sorted(Path(folder).rglob("*")) if d.is_dir()]
    for d in dirs:
        try:
            uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(d)
        except RuntimeError:
            uids = ()
        for uid in uids:
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(d, uid)
            if files:
                series.setdefault(uid, []).extend(files)
    return series


def _describe_series(files: list[str]) -> str:
    r = sitk.ImageFileReader()
    r.SetFileName(files[0])
    try:
        r.ReadImageInformation()
        desc = r.GetMetaData("0008|103e").strip() if r.HasMetaDataKey("0008|103e") else ""
        mod = r.GetMetaData("0008|0060").strip() if r.HasMetaDataKey("0008|0060") else ""
    except RuntimeError:
        desc, mod = "", ""
    return f"{mod} '{desc}' ({len(files)} files)".strip()


def read_dicom_series(folder: str | os.PathLike, *, series_uid: str | None = None) -> Image:
    """Read one DICOM series: slices sorted by position, rescale slope/intercept applied.

    A folder with several series needs ``series_uid``; the error lists the series found.
    """
    folder = Path(folder)
    series = list_dicom_series(folder)
    if not series:
        raise DicomError(f"{folder}: no DICOM series found (the folder is empty or holds no readable DICOM files)")
    if series_uid is None:
        if len(series) > 1:
            listing = "; ".join(f"{uid}: {_describe_series(f)}" for uid, f in series.items())
            raise DicomError(f"{folder}: holds {len(series)} DICOM series, choose one by its series UID: {listing}")
        series_uid = next(iter(series))
    if series_uid not in series:
        raise DicomError(f"{folder}: no series with UID {series_uid!r}; found {sorted(series)}")
    files = _sort_slices(series[series_uid], folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    try:
        img = reader.Execute()  # applies rescale slope/intercept
    except RuntimeError as e:
        raise DicomError(f"{folder}: cannot read series {series_uid} ({_first_line(e)})") from None
    if img.GetDimension() == 2:
        img = sitk.JoinSeries(img)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidImageError(f"{folder}: series {series_uid} is a colour image; a scalar volume is required")
    if img.GetPixelID() == sitk.sitkFloat64:  # rescaled values: float32 holds them and halves the memory
        img = sitk.Cast(img, sitk.sitkFloat32)
    meta = {}
    for key, name in (("0008|0060", "modality"), ("0008|103e", "series_description"),
                      ("0010|0020", "patient_id"), ("0020|000d", "study_uid")):
        if reader.HasMetaDataKey(0, key):
            meta[name] = reader.GetMetaData(0, key).strip()
    meta["series_uid"] = series_uid
    meta["source"] = str(folder)
    return from_sitk(img, metadata=meta)


def _sort_slices(files: list[str], folder: Path) -> list[str]:
    """Sort a series' files by position along the slice normal; reject duplicated, missing or
    irregularly spaced slices and mixed orientations, which would silently distort the geometry."""
    positions, orientations = [], []
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        try:
            r.ReadImageInformation()
            positions.append([float(v) for v in r.GetMetaData("0020|0032").split("\\")])
            orientations.append([float(v) for v in r.GetMetaData("0020|0037").split("\\")])
        except RuntimeError:
            if len(files) == 1:
                return files
            raise DicomError(
                f"{f}: unreadable DICOM slice or no image position/orientation; remove the file or re-export the series"
            ) from None
        except ValueError:
            raise DicomError(f"{f}: malformed image position or orientation tag") from None
    pos, ori = np.asarray(positions), np.asarray(orientations)
    if pos.shape[1:] != (3,) or ori.shape[1:] != (6,):
        raise DicomError(f"{folder}: malformed image position or orientation tags")
    if not np.allclose(ori, ori[0], atol=1e-3):
        raise DicomError(f"{folder}: the series mixes slice orientations (e.g. a scout or a reformat); "
                         "choose another series or remove those files")
    normal = np.cross(ori[0, :3], ori[0, 3:])
    along = pos @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    files = [files[i] for i in order]
    if len(files) < 2:
        return files
    d = np.diff(along)
    dup = np.nonzero(d < 1e-3)[0]
    if dup.size:
        a, b = Path(files[dup[0]]).name, Path(files[dup[0] + 1]).name
        raise DicomError(
            f"{folder}: {dup.size + 1} slices share a position (e.g. {a} and {b} at {along[dup[0]]:.3f} mm); "
            "the series holds a duplicated slice or mixes acquisitions: remove the duplicates"
        )
    step = float(np.median(d))
    if np.max(np.abs(d - step)) > max(0.01 * step, 1e-3):
        gap = int(np.argmax(np.abs(d - step)))
        raise DicomError(
            f"{folder}: slice spacing is irregular ({d.min():.3f}..{d.max():.3f} mm, e.g. {d[gap]:.3f} mm after "
            f"{Path(files[gap]).name}); slices are missing or the series mixes acquisitions"
        )
    return files


def write_dicom_series(image: Image, folder: str | os.PathLike, *, modality: str = "CT",
                       series_description: str = "claraseg", series_uid: str | None = None,
                       rescale: tuple[float, float] | None = None) -> list[Path]:
    """Write an image as a DICOM series (one file per k slice), e.g. for tests and demo data.

    Pixel data are 16-bit signed integers ``stored = round((value - intercept) / slope)`` with
    ``rescale=(slope, intercept)`` (default ``(1, 0)``), so a reader gets ``stored * slope + intercept``
    back. DICOM cannot hold a left-handed grid: for a direction whose k axis is flipped the slices are
    written at the same physical positions and a reader sees the right-handed equivalent (k reversed).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    slope, intercept = (float(v) for v in rescale) if rescale else (1.0, 0.0)
    if not np.isfinite(slope) or slope == 0 or not np.isfinite(intercept):
        raise ImageWriteError(f"rescale slope {slope} and intercept {intercept} must be finite, slope non-zero")
    arr = image.array.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InvalidImageError("the image holds NaN or infinite voxels, which DICOM cannot store")
    stored = np.rint((arr - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ImageWriteError(
            f"values {arr.min():g}..{arr.max():g} do not fit 16-bit DICOM pixels with slope {slope:g} and "
            f"intercept {intercept:g}; choose a rescale that maps them into -32768..32767"
        )
    # GDCM applies slope/intercept itself when given real values; integer input needs an integer slope.
    values = (stored * slope + intercept).astype(np.float32 if rescale else np.int16)
    rng = np.random.default_rng()
    uid_root = "1.2.826.0.1.3680043.8.498"
    series_uid = series_uid or f"{uid_root}.{rng.integers(1, 2**62)}"
    study_uid = f"{uid_root}.{rng.integers(1, 2**62)}"
    d = image.direction
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    for k in range(arr.shape[0]):
        sl = sitk.GetImageFromArray(values[k])
        sl.SetSpacing([float(image.spacing[0]), float(image.spacing[1])])
        pos = image.origin + d[:, 2] * image.spacing[2] * k
        tags = {
            "0008|0060": modality,
            "0008|103e": series_description,
            "0020|000e": series_uid,
            "0020|000d": study_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in pos),
            "0020|0037": "\\".join(f"{v:.8f}" for v in np.concatenate([d[:, 0], d[:, 1]])),
            "0018|0050": f"{image.spacing[2]:.6f}",
            "0028|1053": f"{slope:g}",
            "0028|1052": f"{intercept:g}",
            "0028|0100": "16",
            "0028|0101": "16",
            "0028|0102": "15",
            "0028|0103": "1",
            "0010|0020": "PHANTOM",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        path = folder / f"slice{k:04d}.dcm"
        writer.SetFileName(str(path))
        try:
            writer.Execute(sl)
        except RuntimeError as e:
            raise ImageWriteError(f"{path}: cannot write DICOM ({_first_line(e)})") from None
        paths.append(path)
    return paths


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
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=ext, dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(img, tmp, useCompression=compress)
        _chmod_default(tmp)
        os.replace(tmp, path)
    except RuntimeError as e:
        raise ImageWriteError(f"{path}: cannot write ({_first_line(e)})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
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


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        _chmod_default(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
