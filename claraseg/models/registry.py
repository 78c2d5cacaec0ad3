"""The model registry: every bundle of one or more models folders, with versions.

Folder layout: ``<models_dir>/<name>/`` is version 1 of model ``name``; publishing adds
``<models_dir>/<name>@v2/``, ``@v3``... A plain name selects the newest version, ``name@vN`` a given one,
so old versions stay selectable. Later folders in ``dirs`` override earlier ones for the same name and
version (a user's models folder can replace a packaged model).

Used by the engine (``LocalBackend``), the server and the fine-tune jobs::

    reg = ModelRegistry()                      # the packaged default bundles (+ $CLARASEG_MODELS)
    reg.descriptors()                          # what clients see
    net = reg.network("deepgrow3d")            # loaded once, cached
    new_name = reg.publish("deepgrow3d", "/jobs/7/bundle")   # -> "deepgrow3d@v2", reloaded
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

from claraseg.backend import ModelDescriptor
from claraseg.errors import ClarasegError, ModelError, UnknownModelError
from claraseg.models.bundle import METADATA, Bundle, read_bundle

#: The default bundles shipped inside the package.
PACKAGED_DIR = Path(__file__).resolve().parent / "bundles"
_FOLDER = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+?)(?:@v(?P<n>\d+))?$")


def split_name(name: str) -> tuple[str, int | None]:
    """``"deepgrow3d@v2"`` -> ``("deepgrow3d", 2)``; ``"deepgrow3d"`` -> ``("deepgrow3d", None)``."""
    m = _FOLDER.match(name or "")
    if not m:
        raise UnknownModelError(f"{name!r} is not a model name (letters, digits, _ . -, optionally @vN)")
    return m.group("name"), int(m.group("n")) if m.group("n") else None


def default_dirs() -> list[Path]:
    """The packaged bundles, then the folders of ``$CLARASEG_MODELS`` (os.pathsep-separated)."""
    extra = [Path(p) for p in os.environ.get("CLARASEG_MODELS", "").split(os.pathsep) if p]
    return [PACKAGED_DIR, *extra]


class ModelRegistry:
    """Bundles by name and version, networks loaded lazily and cached per device. Thread-safe.

    Args:
        dirs: models folders (a single folder or a list); default :func:`default_dirs`.
        publish_dir: where :meth:`publish` writes new versions; default the last of ``dirs``.
        device: torch device for :meth:`network`.
    """

    def __init__(self, dirs: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                 publish_dir: str | os.PathLike | None = None, device: str = "cpu"):
        if dirs is None:
            dirs = default_dirs()
        elif isinstance(dirs, (str, os.PathLike)):
            dirs = [dirs]
        self.dirs = [Path(d) for d in dirs]
        self.publish_dir = Path(publish_dir) if publish_dir else self.dirs[-1]
        self.device = device
        self._lock = threading.RLock()
        self._bundles: dict[tuple[str, int], Bundle] = {}
        self._networks: dict[tuple[str, int, str], object] = {}
        self.errors: dict[str, str] = {}
        self.reload()

    # ----- loading ---------------------------------------------------------------------------------
    def reload(self) -> None:
        """Rescan the folders (e.g. after a bundle was published or copied in). Networks are reloaded on
        next use; sessions keep the networks they already hold."""
        bundles: dict[tuple[str, int], Bundle] = {}
        errors: dict[str, str] = {}
        for d in self.dirs:
            if not d.is_dir():
                continue
            for sub in sorted(d.iterdir()):
                m = _FOLDER.match(sub.name)
                if not m or not (sub / METADATA).is_file():
                    continue
                name, n = m.group("name"), int(m.group("n") or 1)
                try:
                    bundles[(name, n)] = read_bundle(sub, name=name)
                except ClarasegError as e:  # one broken bundle must not hide the others
                    errors[sub.name] = str(e)
        with self._lock:
            self._bundles = bundles
            self._networks = {}
            self.errors = errors

    def names(self) -> list[str]:
        """Model names (newest versions), sorted."""
        with self._lock:
            return sorted({name for name, _ in self._bundles})

    def versions(self, name: str) -> list[int]:
        """The version numbers of a model, ascending."""
        base, _ = split_name(name)
        with self._lock:
            return sorted(n for b, n in self._bundles if b == base)

    def resolve(self, name: str) -> tuple[str, int]:
        """``name`` or ``name@vN`` -> (base name, version); raises :class:`UnknownModelError`."""
        base, n = split_name(name)
        versions = self.versions(base)
        if not versions or (n is not None and n not in versions):
            available = ", ".join(self.names()) or "none"
            what = f"version {n} of model {base!r}" if versions else f"model {name!r}"
            raise UnknownModelError(f"no {what} is loaded (available: {available}"
                                    + (f"; versions of {base}: {versions}" if versions else "") + ")")
        return base, versions[-1] if n is None else n

    def get(self, name: str) -> Bundle:
        """The bundle of ``name`` (newest version) or ``name@vN``."""
        key = self.resolve(name)
        with self._lock:
            return self._bundles[key]

    def descriptor(self, name: str) -> ModelDescriptor:
        base, n = self.resolve(name)
        d = self.get(name).descriptor(name=name)
        versions = self.versions(base)
        d.extra = {**d.extra, "revision": n, "versions": [f"{base}@v{v}" for v in versions],
                   "has_weights": self.get(name).weights_path.is_file()}
        return d

    def descriptors(self) -> list[ModelDescriptor]:
        """One descriptor per model (its newest version; older ones are listed in ``extra['versions']``)."""
        return [self.descriptor(n) for n in self.names()]

    def network(self, name: str, device: str | None = None):
        """The model's network with weights (eval mode), loaded once per version and device: the torch module,
        or the runtime object its bundle's ``runtime`` setting selects (:func:`claraseg.runtimes.nets.runtime_net`;
        called the same way, a tensor in and a tensor out)."""
        base, n = self.resolve(name)
        dev = device or self.device
        key = (base, n, dev)
        with self._lock:
            net = self._networks.get(key)
            bundle = self._bundles[(base, n)]
        if net is None:
            from claraseg.runtimes.nets import runtime_net

            net = runtime_net(bundle, bundle.load_network(dev), dev)
            with self._lock:
                net = self._networks.setdefault(key, net)
        return net

    # ----- publishing --------------------------------------------------------------------------------
    def publish(self, name: str, source: str | os.PathLike) -> str:
        """Publish the bundle folder ``source`` as the next version of ``name``; returns ``name@vN``.

        The copy is written beside its final place and renamed into it, so readers never see a partial
        bundle; then the registry reloads. Earlier versions stay selectable as ``name@vK``.
        """
        base, _ = split_name(name)
        src = Path(source)
        read_bundle(src, name=base)  # refuse a malformed bundle before copying it
        if not (src / "models" / "model.pt").is_file():
            raise ModelError(f"{src}: no models/model.pt to publish")
        self.publish_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            n = max(self.versions(base), default=0) + 1
            while True:
                final = self.publish_dir / (base if n == 1 else f"{base}@v{n}")
                tmp = self.publish_dir / f".publishing-{final.name}-{os.getpid()}-{threading.get_ident()}"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(src, tmp)
                try:
                    os.rename(tmp, final)
                    break
                except OSError:  # another process published this version first
                    shutil.rmtree(tmp, ignore_errors=True)
                    if not final.exists():
                        raise
                    n += 1
            self.reload()
        return final.name
