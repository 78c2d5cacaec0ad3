"""The spec of a federated fine-tune job: plain data, checked before anything is built from it.

A spec comes from a file, the command line or (through the server) a client, so it is data only: no
MONAI config expressions (``$...``), references (``@...``, ``%...``) or ``_target_`` keys may reach the
sites' training configs, sites are plain names, numbers are bounded. Light to import (no torch, no NVFlare).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from claraseg.errors import ConfigError
from claraseg.io import write_text_atomic
from claraseg.train.spec import check_model_name

#: NVFlare site names: letters, digits, ``-`` and ``_`` (they become folder and app names).
SITE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
#: Config ids an override may set: ``training#max_iterations``, ``optimizer#lr``, ``replay``...
OVERRIDE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(#[A-Za-z0-9_]+)*$")
#: Overrides the federation sets itself for every local round (a spec may not change them).
RESERVED_OVERRIDES = ("training#max_iterations", "training#max_epochs", "training#max_time_s", "training#val_interval",
                      "training#checkpoint_interval", "training#publish", "training#require_improvement")
MAX_ROUNDS = 10_000
MAX_LOCAL_ITERATIONS = 1_000_000
MAX_SITES = 100
MAX_DEPTH = 8
MAX_ITEMS = 1_000


def check_plain(value: Any, where: str = "spec", depth: int = 0) -> None:
    """Raise :class:`ConfigError` unless ``value`` is plain JSON data without config syntax.

    Strings may not start with ``$`` (expression), ``@`` (reference) or ``%`` (file reference) and no key
    may be ``_target_`` (or another ``_..._`` directive of MONAI's parser such as ``_requires_``)."""
    if depth > MAX_DEPTH:
        raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {value} is not a finite number")
        return
    if isinstance(value, str):
        if value[:1] in ("$", "@", "%"):
            raise ConfigError(f"{where}: {value[:40]!r} is a config expression or reference; a federated job takes "
                              "plain values only")
        if len(value) > 4096:
            raise ConfigError(f"{where}: a string of {len(value)} characters is too long")
        return
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_ITEMS:
            raise ConfigError(f"{where}: more than {MAX_ITEMS} items")
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise ConfigError(f"{where}: more than {MAX_ITEMS} keys")
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where}: key {key!r} is not a string")
            if key.startswith("_") and key.endswith("_"):
                raise ConfigError(f"{where}: key {key!r} is a config directive; a federated job takes plain values only")
            check_plain(item, f"{where}#{key}", depth + 1)
        return
    raise ConfigError(f"{where}: a {type(value).__name__} is not plain data")


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


@dataclass
class FederatedSpec:
    """What a federated job trains (written to ``<job>/federated.json``).

    Args:
        bundle: the model bundle every site starts from (a folder; each site needs the same bundle).
        sites: site name -> that site's datalist (a path on that site's machine, as ``claraseg train run`` takes).
        rounds: FedAvg rounds.
        local_iterations: optimizer steps of each site's fine-tune per round.
        overrides: the sites' training overrides (config ids -> plain values), as for ``claraseg train run``.
        structures: interactive kinds: train on these structure names only (at every site).
        he: encrypt the sites' updates (CKKS, TenSEAL) so the server aggregates ciphertexts.
        name: name of the published model (default: the bundle's).
        registry: models folder the publishing site publishes into (default: the bundle's parent).
        publish_site: the site that decrypts and publishes the final global model (default: the first).
        min_sites: sites whose updates a round needs (default: all).
        device, threads: of each site's training.
        seed: the sites' training seed (each site adds its index).
    """

    bundle: str
    sites: dict[str, str]
    rounds: int = 5
    local_iterations: int = 20
    overrides: dict[str, Any] = field(default_factory=dict)
    structures: list[str] | None = None
    he: bool = False
    name: str | None = None
    registry: str | None = None
    publish_site: str | None = None
    min_sites: int | None = None
    device: str = "auto"
    threads: int | None = 1
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (called on construction); raises :class:`ConfigError` saying what is wrong."""
        check_plain(asdict(self), "federated job")
        if not isinstance(self.bundle, str) or not self.bundle:
            raise ConfigError("bundle must be the path of a model bundle folder")
        if not isinstance(self.sites, dict) or not self.sites:
            raise ConfigError("sites must map at least one site name to its datalist")
        if len(self.sites) > MAX_SITES:
            raise ConfigError(f"at most {MAX_SITES} sites")
        for site, datalist in self.sites.items():
            if not SITE_NAME.match(site) or site.lower() in ("server", "all"):
                raise ConfigError(f"site name {site!r}: use letters, digits, '-' and '_' (not 'server' or 'all')")
            if not isinstance(datalist, str) or not datalist:
                raise ConfigError(f"site {site!r}: its datalist must be a file path")
        _int(self.rounds, "rounds", 1, MAX_ROUNDS)
        _int(self.local_iterations, "local_iterations", 1, MAX_LOCAL_ITERATIONS)
        _int(self.seed, "seed", 0, 2**31 - 1)
        if not isinstance(self.overrides, dict):
            raise ConfigError("overrides must be an object of config ids -> values")
        for key in self.overrides:
            if not OVERRIDE_KEY.match(key):
                raise ConfigError(f"override key {key!r} is not a config id (such as 'optimizer#lr')")
            if key in RESERVED_OVERRIDES:
                raise ConfigError(f"override {key!r} is set by the federation for each round (use rounds and "
                                  "local_iterations)")
        if self.structures is not None and (not isinstance(self.structures, list)
                                            or not all(isinstance(s, str) and s for s in self.structures)):
            raise ConfigError("structures must be a list of structure names")
        if not isinstance(self.he, bool):
            raise ConfigError("he must be true or false")
        if self.publish_site is not None and self.publish_site not in self.sites:
            raise ConfigError(f"publish_site {self.publish_site!r} is not one of the sites {sorted(self.sites)}")
        if self.min_sites is not None:
            _int(self.min_sites, "min_sites", 1, len(self.sites))
        if self.threads is not None:
            _int(self.threads, "threads", 1, 256)
        if self.device != "auto" and self.device != "cpu" and not re.match(r"^cuda(:\d{1,2})?$", str(self.device)):
            raise ConfigError(f"device {self.device!r}: use auto, cpu, cuda or cuda:N")
        if self.name is not None:
            check_model_name(self.name)

    @property
    def publisher(self) -> str:
        return self.publish_site or next(iter(self.sites))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> FederatedSpec:
        """A spec from plain data (a parsed JSON object); unknown keys are an error."""
        if not isinstance(data, dict):
            raise ConfigError("a federated job spec must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown} in the federated job spec; known: {sorted(known)}")
        if "bundle" not in data or "sites" not in data:
            raise ConfigError("a federated job spec needs 'bundle' and 'sites'")
        check_plain(data, "federated job")
        return cls(**data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FederatedSpec:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except OSError as e:
            raise ConfigError(f"{p}: cannot read the federated job spec ({e.strerror})") from None
        except ValueError as e:
            raise ConfigError(f"{p}: the federated job spec is not valid JSON ({e})") from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1))
