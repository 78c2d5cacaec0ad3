"""At least 100 malformed or hostile requests: each answered 4xx with a JSON message, never 5xx; the
server keeps serving and no stored label changes."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import struct
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
import SimpleITK as sitk

from claraseg.client.wire import VOLUME_MEDIA_TYPE, encode_volume_parts
from claraseg.io import Image, MaskDelta, write_image

VOL = {"Content-Type": VOLUME_MEDIA_TYPE}
JSON = {"Content-Type": "application/json"}
DELTA = {"Content-Type": "application/x-claraseg-maskdelta"}


def _vol(dtype="int16", size=(8, 8, 4), origin=(0, 0, 0), spacing=(1, 1, 1), direction=None, payload=None,
         header=None) -> bytes:
    h = header if header is not None else json.dumps({
        "dtype": dtype, "size_ijk": list(size), "origin": list(origin), "spacing": list(spacing),
        "direction": direction if direction is not None else [1, 0, 0, 0, 1, 0, 0, 0, 1]}).encode()
    if payload is None:
        n = int(np.prod([max(0, int(v)) for v in size])) if all(isinstance(v, int) for v in size) else 0
        payload = bytes(n * np.dtype(dtype if dtype in ("int16", "float32", "uint8") else "int16").itemsize)
    return struct.pack("<4sB3xI", b"CSVL", 1, len(h)) + h + payload


def _file(name: str, image: Image | None = None, data: bytes | None = None) -> bytes:
    if data is not None:
        return data
    with tempfile.TemporaryDirectory() as tmp:
        return write_image(image, Path(tmp) / name).read_bytes()


def _nifti_2d() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        p = str(Path(tmp) / "flat.nii.gz")
        sitk.WriteImage(sitk.Image(10, 10, sitk.sitkUInt8), p)
        return Path(p).read_bytes()


@pytest.fixture(scope="module")
def world(served, phantom):
    """A session, a stored image with a label version, and the bytes of every stored label file."""
    from claraseg.client import RemoteBackend

    image, label = phantom
    b = RemoteBackend(served.url, served.token)
    s = b.open_session(image)
    b.upload_image(image, "victim")
    b.save_label("victim", label, author="owner")
    models = {d.kind: d.name for d in b.models()}
    yield {"backend": b, "session": s.id, "image": image, "label": label, "models": models}
    b.close()


def label_files(served) -> dict[str, str]:
    root = Path(served.datastore) / "labels"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def cases(w) -> list[tuple[str, str, str, dict]]:
    """(name, method, path, requests kwargs). ``{sid}`` in a path becomes the live session id."""
    img, lab = w["image"], w["label"]
    m = w["models"]
    grow = m.get("deepgrow3d") or m.get("deepgrow2d") or next(iter(m.values()))
    dextr = m.get("dextr3d", grow)
    seg = m.get("segmentation", grow)
    size = img.size_ijk
    good = _file("x.nii.gz", img)
    other_grid = Image(lab.array[:, :, :-1].copy(), lab.origin, lab.spacing, lab.direction)
    shifted = Image(lab.array, lab.origin + 7.0, lab.spacing, lab.direction)
    respaced = Image(lab.array, lab.origin, lab.spacing * 1.5, lab.direction)
    fractional = Image(lab.array.astype(np.float32) + 0.5, lab.origin, lab.spacing, lab.direction)
    negative = Image(lab.array.astype(np.int16) - 1, lab.origin, lab.spacing, lab.direction)
    head, vox = encode_volume_parts(img)
    full = head + bytes(vox)
    bomb = gzip.compress(b"\0" * (80 * 2**20), 9)
    d_ok = MaskDelta.from_full((lab.array == 1).astype(np.uint8))
    d_wrong = MaskDelta.from_full(np.ones((4, 4, 4), np.uint8))
    d_vals = MaskDelta((0, 0, 0), (2, 2, 2), np.full((2, 2, 2), 3, np.uint8), size)
    click = "/session/{sid}/click"
    sm = "/session/{sid}/set_mask"
    c: list[tuple[str, str, str, dict]] = [
        # ----- session upload: raw volumes
        ("vol-empty", "PUT", "/session/", {"data": b"", "headers": VOL}),
        ("vol-garbage", "PUT", "/session/", {"data": b"\x00garbage" * 100, "headers": VOL}),
        ("vol-bad-magic", "PUT", "/session/", {"data": b"XXXX" + _vol()[4:], "headers": VOL}),
        ("vol-header-len-huge", "PUT", "/session/", {"data": struct.pack("<4sB3xI", b"CSVL", 1, 2**31) + b"{}", "headers": VOL}),
        ("vol-header-bad-json", "PUT", "/session/", {"data": _vol(header=b"{not json"), "headers": VOL}),
        ("vol-header-not-object", "PUT", "/session/", {"data": _vol(header=b"[1,2,3]"), "headers": VOL}),
        ("vol-no-dtype", "PUT", "/session/", {"data": _vol(header=b'{"size_ijk":[2,2,2]}'), "headers": VOL}),
        ("vol-dtype-complex", "PUT", "/session/", {"data": _vol("complex128"), "headers": VOL}),
        ("vol-dtype-object", "PUT", "/session/", {"data": _vol("object"), "headers": VOL}),
        ("vol-dtype-nonsense", "PUT", "/session/", {"data": _vol("int99"), "headers": VOL}),
        ("vol-version-2", "PUT", "/session/", {"data": b"CSVL\x02" + _vol()[5:], "headers": VOL}),
        ("vol-size-negative", "PUT", "/session/", {"data": _vol(size=(-8, 8, 4), payload=b""), "headers": VOL}),
        ("vol-size-zero", "PUT", "/session/", {"data": _vol(size=(0, 8, 4), payload=b""), "headers": VOL}),
        ("vol-size-huge", "PUT", "/session/", {"data": _vol(size=(4000, 4000, 4000), payload=b"\0" * 64), "headers": VOL}),
        ("vol-size-2d", "PUT", "/session/", {"data": _vol(size=(8, 8), payload=b"\0" * 128), "headers": VOL}),
        ("vol-size-strings", "PUT", "/session/", {"data": _vol(size=("a", "b", "c"), payload=b""), "headers": VOL}),
        ("vol-payload-short", "PUT", "/session/", {"data": _vol(payload=b"\0" * 10), "headers": VOL}),
        ("vol-payload-long", "PUT", "/session/", {"data": _vol(payload=b"\0" * 1000), "headers": VOL}),
        ("vol-spacing-zero", "PUT", "/session/", {"data": _vol(spacing=(0, 1, 1)), "headers": VOL}),
        ("vol-spacing-negative", "PUT", "/session/", {"data": _vol(spacing=(-1, 1, 1)), "headers": VOL}),
        ("vol-spacing-nan", "PUT", "/session/", {"data": _vol(spacing=(float("nan"), 1, 1)), "headers": VOL}),
        ("vol-spacing-inf", "PUT", "/session/", {"data": _vol(spacing=(float("inf"), 1, 1)), "headers": VOL}),
        ("vol-direction-sheared", "PUT", "/session/", {"data": _vol(direction=[1, 1, 0, 0, 1, 0, 0, 0, 1]), "headers": VOL}),
        ("vol-direction-short", "PUT", "/session/", {"data": _vol(direction=[1, 0, 0]), "headers": VOL}),
        ("vol-origin-strings", "PUT", "/session/", {"data": _vol(origin=("x", "y", "z")), "headers": VOL}),
        ("vol-nan-voxels", "PUT", "/session/", {"data": _vol("float32", payload=np.full(256, np.nan, np.float32).tobytes()), "headers": VOL}),
        ("gzip-not-gzip", "PUT", "/session/", {"data": full, "headers": {**VOL, "Content-Encoding": "gzip"}}),
        ("gzip-truncated", "PUT", "/session/", {"data": gzip.compress(full)[:200], "headers": {**VOL, "Content-Encoding": "gzip"}}),
        ("encoding-brotli", "PUT", "/session/", {"data": full, "headers": {**VOL, "Content-Encoding": "br"}}),
        ("gzip-bomb", "PUT", "/session/", {"data": bomb, "headers": {**VOL, "Content-Encoding": "gzip"}}),
        ("upload-text-plain", "PUT", "/session/", {"data": full, "headers": {"Content-Type": "text/plain"}}),
        ("upload-json", "PUT", "/session/", {"json": {"image": "x"}}),
        ("upload-no-content-type", "PUT", "/session/", {"data": full, "headers": {"Content-Type": ""}}),
        # ----- session upload: files
        ("multipart-no-file", "PUT", "/session/", {"files": {"other": ("x.txt", b"hello")}}),
        ("multipart-text-ext", "PUT", "/session/", {"files": {"files": ("x.txt", b"hello")}}),
        ("multipart-corrupt-nifti", "PUT", "/session/", {"files": {"files": ("x.nii.gz", b"\x1f\x8b" + b"junk" * 50)}}),
        ("multipart-truncated-nifti", "PUT", "/session/", {"files": {"files": ("x.nii.gz", good[: len(good) // 2])}}),
        ("multipart-garbage-nrrd", "PUT", "/session/", {"files": {"files": ("x.nrrd", b"NRRD0004\ntype: banana\n\n")}}),
        ("multipart-2d-image", "PUT", "/session/", {"files": {"files": ("flat.nii.gz", _nifti_2d())}}),
        ("multipart-empty-file", "PUT", "/session/", {"files": {"files": ("x.nii.gz", b"")}}),
        ("multipart-gz-garbage", "PUT", "/session/", {"files": {"files": ("x.nrrd.gz", b"not gzip at all")}}),
        ("multipart-traversal-name", "PUT", "/session/", {"files": {"files": ("../../etc/passwd", b"root:x:0:0")}}),
        ("multipart-broken-boundary", "PUT", "/session/", {"data": b"--xyz\r\nbroken", "headers": {"Content-Type": "multipart/form-data; boundary=abc"}}),
        ("octet-no-filename", "PUT", "/session/", {"data": good, "headers": {"Content-Type": "application/octet-stream"}}),
        ("octet-bad-filename", "PUT", "/session/?filename=evil.exe", {"data": good, "headers": {"Content-Type": "application/octet-stream"}}),
        ("octet-corrupt", "PUT", "/session/?filename=x.nii.gz", {"data": b"\x1f\x8bxx", "headers": {"Content-Type": "application/octet-stream"}}),
        ("session-image-traversal", "PUT", "/session/?image=../../etc", {}),
        ("session-image-unknown", "PUT", "/session/?image=nope", {}),
        ("session-expiry-negative", "PUT", "/session/?expiry=-1", {"data": full, "headers": VOL}),
        ("session-expiry-text", "PUT", "/session/?expiry=abc", {"data": full, "headers": VOL}),
        # ----- session ids
        ("get-unknown-session", "GET", "/session/" + "f" * 32, {}),
        ("get-session-dotdot", "GET", "/session/..%2F..%2Fetc%2Fpasswd", {}),
        ("get-session-bad-chars", "GET", "/session/a;rm -rf", {}),
        ("delete-unknown-session", "DELETE", "/session/" + "e" * 32, {}),
        ("click-unknown-session", "POST", "/session/" + "d" * 32 + "/click", {"json": {"model": grow, "foreground": [[1, 1, 1]]}}),
        ("click-session-encoded-dots", "POST", "/session/%2e%2e/click", {"json": {"model": grow, "foreground": [[1, 1, 1]]}}),
        # ----- clicks
        ("click-malformed-json", "POST", click, {"data": b"{bad json", "headers": JSON}),
        ("click-json-array", "POST", click, {"json": [1, 2, 3]}),
        ("click-json-string", "POST", click, {"json": "click"}),
        ("click-empty-body", "POST", click, {"data": b"", "headers": JSON}),
        ("click-binary-body", "POST", click, {"data": b"\xff\xfe\x00\x01", "headers": JSON}),
        ("click-text-plain", "POST", click, {"data": json.dumps({"model": grow, "foreground": [[1, 1, 1]]}), "headers": {"Content-Type": "text/plain"}}),
        ("click-missing-model", "POST", click, {"json": {"foreground": [[1, 1, 1]]}}),
        ("click-unknown-model", "POST", click, {"json": {"model": "nope", "foreground": [[1, 1, 1]]}}),
        ("click-model-number", "POST", click, {"json": {"model": 5, "foreground": [[1, 1, 1]]}}),
        ("click-fg-not-list", "POST", click, {"json": {"model": grow, "foreground": "here"}}),
        ("click-point-2d", "POST", click, {"json": {"model": grow, "foreground": [[1, 1]]}}),
        ("click-point-4d", "POST", click, {"json": {"model": grow, "foreground": [[1, 1, 1, 1]]}}),
        ("click-point-outside", "POST", click, {"json": {"model": grow, "foreground": [[size[0], 1, 1]]}}),
        ("click-point-outside-k", "POST", click, {"json": {"model": grow, "foreground": [[1, 1, size[2] + 5]]}}),
        ("click-point-negative", "POST", click, {"json": {"model": grow, "foreground": [[-1, 1, 1]]}}),
        ("click-bg-outside", "POST", click, {"json": {"model": grow, "background": [[1, 999, 1]]}}),
        ("click-point-huge", "POST", click, {"json": {"model": grow, "foreground": [[10**12, 1, 1]]}}),
        ("click-point-bignum", "POST", click, {"json": {"model": grow, "foreground": [[10**40, 1, 1]]}}),
        ("click-point-fraction", "POST", click, {"json": {"model": grow, "foreground": [[1.5, 1, 1]]}}),
        ("click-point-string", "POST", click, {"json": {"model": grow, "foreground": [["a", 1, 1]]}}),
        ("click-point-nan", "POST", click, {"data": '{"model": "' + grow + '", "foreground": [[NaN, 1, 1]]}', "headers": JSON}),
        ("click-point-null", "POST", click, {"json": {"model": grow, "foreground": [[None, 1, 1]]}}),
        ("click-no-points", "POST", click, {"json": {"model": grow}}),
        ("click-too-many-points", "POST", click, {"json": {"model": grow, "foreground": [[1, 1, 1]] * 10001}}),
        ("click-slice-axis-5", "POST", click, {"json": {"model": grow, "foreground": [[1, 1, 1]], "slice_axis": 5}}),
        ("click-slice-axis-neg", "POST", click, {"json": {"model": grow, "foreground": [[1, 1, 1]], "slice_axis": -1}}),
        ("click-object-traversal", "POST", click, {"json": {"model": grow, "foreground": [[1, 1, 1]], "object_id": "../x"}}),
        ("click-object-empty", "POST", click, {"json": {"model": grow, "foreground": [[1, 1, 1]], "object_id": ""}}),
        ("click-extra-field", "POST", click, {"json": {"model": grow, "foreground": [[1, 1, 1]], "evil": True}}),
        ("click-body-too-large", "POST", click, {"data": b"{" + b" " * (2 * 2**20) + b"}", "headers": JSON}),
        ("click-get-method", "GET", click, {}),
        # ----- other interactions
        ("extreme-too-few", "POST", "/session/{sid}/extreme_points", {"json": {"model": dextr, "points": [[1, 1, 1]] * 3}}),
        ("extreme-outside", "POST", "/session/{sid}/extreme_points", {"json": {"model": dextr, "points": [[1, 1, 1]] * 5 + [[size[0] + 1, 1, 1]]}}),
        ("extreme-empty", "POST", "/session/{sid}/extreme_points", {"json": {"model": dextr, "points": []}}),
        ("extreme-unknown-model", "POST", "/session/{sid}/extreme_points", {"json": {"model": "nope", "points": [[1, 1, 1]] * 6}}),
        ("auto-unknown-model", "POST", "/session/{sid}/auto_segment", {"json": {"model": "nope"}}),
        ("auto-missing-model", "POST", "/session/{sid}/auto_segment", {"json": {}}),
        ("auto-unknown-session", "POST", "/session/" + "c" * 32 + "/auto_segment", {"json": {"model": seg}}),
        ("undo-bad-object", "POST", "/session/{sid}/undo", {"json": {"object_id": "a/b"}}),
        ("undo-malformed", "POST", "/session/{sid}/undo", {"data": b"]", "headers": JSON}),
        ("clear-unknown-session", "POST", "/session/" + "b" * 32 + "/clear", {"json": {"object_id": "1"}}),
        ("setmask-json", "POST", "/session/{sid}/set_mask", {"json": {"mask": 1}}),
        ("setmask-garbage", "POST", "/session/{sid}/set_mask", {"data": b"garbage!" * 10, "headers": DELTA}),
        ("setmask-truncated", "POST", "/session/{sid}/set_mask", {"data": d_ok.encode()[:-5], "headers": DELTA}),
        ("setmask-wrong-size", "POST", "/session/{sid}/set_mask", {"data": d_wrong.encode(), "headers": DELTA}),
        ("setmask-values-not-binary", "POST", "/session/{sid}/set_mask", {"data": d_vals.encode(), "headers": DELTA}),
        ("setmask-bad-object", "POST", "/session/{sid}/set_mask?object_id=..", {"data": d_ok.encode(), "headers": DELTA}),
        # set_mask's points/clicks: JSON query parameters
        ("setmask-points-bad-json", "POST", sm, {"params": {"points": "[[1,2,3]"}, "data": d_ok.encode(), "headers": DELTA}),
        ("setmask-points-not-json", "POST", sm, {"params": {"points": "1,2,3"}, "data": d_ok.encode(), "headers": DELTA}),
        ("setmask-points-object", "POST", sm, {"params": {"points": '{"i": 1}'}, "data": d_ok.encode(), "headers": DELTA}),
        ("setmask-points-too-few", "POST", sm, {"params": {"points": json.dumps([[1, 1, 1]] * 5)}, "data": d_ok.encode(), "headers": DELTA}),
        ("setmask-points-outside", "POST", sm, {"params": {"points": json.dumps([[1, 1, 1]] * 5 + [[size[0], 1, 1]])}, "data": d_ok.encode(), "headers": DELTA}),
        ("setmask-fg-flat", "POST", sm, {"params": {"foreground": "[1,2,3]"}, "data": d_ok.encode(), "headers": DELTA}),
        ("setmask-fg-too-deep", "POST", sm, {"params": {"foreground": "[[[1,2,3]]]"}, "data": d_ok.encode(), "headers": DELTA}),
        ("setmask-fg-fraction", "POST", sm, {"params": {"foreground": "[[1.5,2,3]]"}, "data": d_ok.encode(), "headers": DELTA}),
        ("setmask-fg-string", "POST", sm, {"params": {"foreground": '[["1",2,3]]'}, "data": d_ok.encode(), "headers": DELTA}),
        ("setmask-fg-nan", "POST", sm, {"params": {"foreground": "[[NaN,2,3]]"}, "data": d_ok.encode(), "headers": DELTA}),
        ("setmask-bg-bool", "POST", sm, {"params": {"background": "[[true,2,3]]"}, "data": d_ok.encode(), "headers": DELTA}),
        ("setmask-bg-negative", "POST", sm, {"params": {"background": "[[-1,2,3]]"}, "data": d_ok.encode(), "headers": DELTA}),
        ("setmask-bg-bignum", "POST", sm, {"params": {"background": "[[" + "9" * 5000 + ",2,3]]"}, "data": d_ok.encode(), "headers": DELTA}),
        ("setmask-bg-deep-nesting", "POST", sm, {"params": {"background": "[" * 3000 + "]" * 3000}, "data": d_ok.encode(), "headers": DELTA}),
        ("setmask-bg-too-many", "POST", sm, {"params": {"background": "[" + ",".join(["0"] * 10001) + "]"}, "data": d_ok.encode(), "headers": DELTA}),
        # ----- one-shot inference
        ("infer-unknown-model", "POST", "/infer/nope?image=victim", {"data": {"params": "{}"}}),
        ("infer-no-source", "POST", f"/infer/{grow}", {"data": {"params": json.dumps({"foreground": [[1, 1, 1]]})}}),
        ("infer-params-bad-json", "POST", f"/infer/{grow}?image=victim", {"data": {"params": "{oops"}}),
        ("infer-params-array", "POST", f"/infer/{grow}?image=victim", {"data": {"params": "[1]"}}),
        ("infer-image-traversal", "POST", f"/infer/{grow}?image=../victim", {"data": {"params": "{}"}}),
        ("infer-image-unknown", "POST", f"/infer/{grow}?image=ghost", {"data": {"params": "{}"}}),
        ("infer-session-unknown", "POST", f"/infer/{grow}?session_id=" + "a" * 32, {"data": {"params": "{}"}}),
        ("infer-points-outside", "POST", f"/infer/{grow}?session_id={{sid}}", {"data": {"params": json.dumps({"foreground": [[999, 1, 1]]})}}),
        ("infer-output-bogus", "POST", f"/infer/{grow}?image=victim&output=exe", {"data": {"params": "{}"}}),
        ("infer-text-plain", "POST", f"/infer/{grow}?image=victim", {"data": "params", "headers": {"Content-Type": "text/plain"}}),
        # ----- datastore reads
        ("ds-image-traversal", "GET", "/datastore/image?image=../../etc/passwd", {}),
        ("ds-image-encoded-traversal", "GET", "/datastore/image?image=%2e%2e%2f%2e%2e%2fetc", {}),
        ("ds-image-absolute", "GET", "/datastore/image?image=/etc/passwd", {}),
        ("ds-image-unknown", "GET", "/datastore/image?image=ghost", {}),
        ("ds-image-missing-param", "GET", "/datastore/image", {}),
        ("ds-image-info-traversal", "GET", "/datastore/image/info?image=..", {}),
        ("ds-label-unknown-image", "GET", "/datastore/label?label=ghost", {}),
        ("ds-label-unknown-tag", "GET", "/datastore/label?label=victim&tag=nothing", {}),
        ("ds-label-tag-traversal", "GET", "/datastore/label?label=victim&tag=../../images", {}),
        ("ds-label-version-zero", "GET", "/datastore/label?label=victim&version=0", {}),
        ("ds-label-version-missing", "GET", "/datastore/label?label=victim&version=99", {}),
        ("ds-label-version-negative", "GET", "/datastore/label?label=victim&version=-1", {}),
        ("ds-label-version-text", "GET", "/datastore/label?label=victim&version=latest", {}),
        ("ds-list-bad-output", "GET", "/datastore/?output=everything", {}),
        # ----- datastore writes
        ("ds-label-other-size", "PUT", "/datastore/label?image=victim", {"files": {"label": ("l.nii.gz", _file("l.nii.gz", other_grid))}}),
        ("ds-label-shifted-origin", "PUT", "/datastore/label?image=victim", {"files": {"label": ("l.nii.gz", _file("l.nii.gz", shifted))}}),
        ("ds-label-other-spacing", "PUT", "/datastore/label?image=victim", {"files": {"label": ("l.nii.gz", _file("l.nii.gz", respaced))}}),
        ("ds-label-fractional", "PUT", "/datastore/label?image=victim", {"files": {"label": ("l.nii.gz", _file("l.nii.gz", fractional))}}),
        ("ds-label-negative", "PUT", "/datastore/label?image=victim", {"files": {"label": ("l.nii.gz", _file("l.nii.gz", negative))}}),
        ("ds-label-unknown-image", "PUT", "/datastore/label?image=ghost", {"files": {"label": ("l.nii.gz", _file("l.nii.gz", lab))}}),
        ("ds-label-tag-slash", "PUT", "/datastore/label?image=victim&tag=a/b", {"files": {"label": ("l.nii.gz", _file("l.nii.gz", lab))}}),
        ("ds-label-tag-dotdot", "PUT", "/datastore/label?image=victim&tag=..", {"files": {"label": ("l.nii.gz", _file("l.nii.gz", lab))}}),
        ("ds-label-params-bad-json", "PUT", "/datastore/label?image=victim", {"files": {"label": ("l.nii.gz", _file("l.nii.gz", lab))}, "data": {"params": "{x"}}),
        ("ds-label-names-list", "PUT", "/datastore/label?image=victim", {"files": {"label": ("l.nii.gz", _file("l.nii.gz", lab))}, "data": {"params": '{"label_names": [1]}'}}),
        ("ds-label-names-bad-key", "PUT", "/datastore/label?image=victim", {"files": {"label": ("l.nii.gz", _file("l.nii.gz", lab))}, "data": {"params": '{"label_names": {"one": "x"}}'}}),
        ("ds-label-corrupt", "PUT", "/datastore/label?image=victim", {"files": {"label": ("l.nii.gz", b"\x1f\x8bjunkjunk")}}),
        ("ds-label-no-file", "PUT", "/datastore/label?image=victim", {"data": {"params": "{}"}}),
        ("ds-label-json-body", "PUT", "/datastore/label?image=victim", {"json": {"label": [1, 2]}}),
        ("ds-label-missing-image", "PUT", "/datastore/label", {"files": {"label": ("l.nii.gz", _file("l.nii.gz", lab))}}),
        ("ds-image-id-traversal", "PUT", "/datastore/image?image=../evil", {"files": {"file": ("x.nii.gz", good)}}),
        ("ds-image-id-hidden", "PUT", "/datastore/image?image=.hidden", {"files": {"file": ("x.nii.gz", good)}}),
        ("ds-image-exists", "PUT", "/datastore/image?image=victim", {"files": {"file": ("x.nii.gz", good)}}),
        ("ds-image-corrupt", "PUT", "/datastore/image?image=new1", {"files": {"file": ("x.nii.gz", b"\x1f\x8b\x08junk")}}),
        ("ds-image-too-large", "PUT", "/datastore/image?image=new2", {"files": {"file": ("x.nii", b"\0" * (65 * 2**20))}}),
        # ----- routes and methods
        ("route-unknown", "GET", "/nothing/here", {}),
        ("route-info-post", "POST", "/info/", {"json": {}}),
        ("route-session-patch", "PATCH", "/session/", {}),
    ]
    return c


AUTH_CASES = [
    ("no-token", {}),
    ("wrong-token", {"Authorization": "Bearer not-the-right-token"}),
    ("basic-scheme", {"Authorization": "Basic dXNlcjpwYXNz"}),
    ("token-scheme", {"Authorization": "Token test-token-0123456789"}),
    ("empty-bearer", {"Authorization": "Bearer "}),
    ("prefix-token", {"Authorization": "Bearer test-token"}),
]


def _check(r: requests.Response, name: str) -> None:
    assert 400 <= r.status_code < 500, f"{name}: HTTP {r.status_code} {r.text[:300]}"
    body = r.json()
    assert isinstance(body.get("detail"), str) and len(body["detail"]) > 5, f"{name}: {body}"


def test_hostile_requests_get_clear_4xx_and_damage_nothing(served, world):
    before = label_files(served)
    assert before, "the fixture stored a label"
    h = {"Authorization": f"Bearer {served.token}"}
    all_cases = cases(world)
    codes = {}
    for name, method, path, kw in all_cases:
        kw = dict(kw)
        kw["headers"] = {**h, **kw.get("headers", {})}
        if kw["headers"].get("Content-Type") == "":
            del kw["headers"]["Content-Type"]
        r = requests.request(method, served.url + path.replace("{sid}", world["session"]), timeout=60, **kw)
        _check(r, name)
        codes[name] = r.status_code
    for name, headers in AUTH_CASES:
        for path in ("/info/", "/datastore/", f"/session/{world['session']}"):
            r = requests.get(served.url + path, headers=headers, timeout=10)
            _check(r, name)
            assert r.status_code == 401
            codes[f"{name}{path}"] = r.status_code
    assert len(codes) >= 100, len(codes)
    # A few answers must be exactly the documented status.
    assert codes["get-unknown-session"] == 404 and codes["ds-image-exists"] == 409
    assert codes["gzip-bomb"] == 413 and codes["click-body-too-large"] == 413 and codes["ds-image-too-large"] == 413
    assert codes["upload-text-plain"] == 415 and codes["click-point-outside"] == 400
    assert {v for k, v in codes.items() if k.startswith("setmask-") and k[8:].split("-")[0] in ("points", "fg", "bg")} == {400}
    # Still serving, the session still works, labels untouched.
    assert served.alive()
    assert requests.get(served.url + "/info/", headers=h, timeout=10).status_code == 200
    assert label_files(served) == before


def _raw(served, method: str, path: str, headers: dict[str, str], body: bytes = b"", parse: bool = True):
    u = urlsplit(served.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    if body:
        conn.send(body)
    r = conn.getresponse()
    data = r.read()
    out = r.status, (json.loads(data or b"{}") if parse else data)
    conn.close()
    return out


def test_lying_content_lengths_and_streamed_oversize(served, world):
    auth = {"Authorization": f"Bearer {served.token}"}
    status, body = _raw(served, "PUT", "/session/", {**auth, "Content-Type": VOLUME_MEDIA_TYPE,
                                                     "Content-Length": str(10 * 2**30)})
    assert status == 413 and "limit" in body["detail"]
    # The HTTP parser itself refuses a negative length (plain-text 400, before the app sees it).
    status, _ = _raw(served, "PUT", "/session/", {**auth, "Content-Type": VOLUME_MEDIA_TYPE, "Content-Length": "-5"},
                     parse=False)
    assert status == 400

    def chunks():
        for _ in range(70):
            yield b"\0" * 2**20

    r = requests.put(served.url + "/session/", data=chunks(), headers={**auth, "Content-Type": VOLUME_MEDIA_TYPE},
                     timeout=60)
    assert r.status_code == 413, r.text[:200]
    assert requests.get(served.url + "/info/", headers=auth, timeout=10).status_code == 200


def test_a_good_session_still_answers_after_the_barrage(served, world):
    s = world["session"]
    grow = world["models"].get("deepgrow3d")
    if grow is None:
        pytest.skip("no deepgrow3d model hosted")
    r = requests.post(f"{served.url}/session/{s}/click", json={"model": grow, "foreground": [[24, 24, 16]]},
                      headers={"Authorization": f"Bearer {served.token}"}, timeout=60)
    assert r.status_code == 200 and MaskDelta.decode(r.content).image_size == world["image"].size_ijk

