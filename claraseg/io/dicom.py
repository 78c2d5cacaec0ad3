"""DICOM series: list the series of a folder tree, read one (slices sorted along the slice normal,
rescale slope/intercept applied, gaps and duplicates refused), and write one (for tests and demos)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from claraseg.errors import DicomError, ImageWriteError, InvalidImageError
from claraseg.io.geometry import from_sitk
from claraseg.io.image import Image
from claraseg.io.itkerrors import first_line as _first_line


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
