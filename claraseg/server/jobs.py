"""Fine-tuning jobs behind ``/train/``: bundles from the models folder, data from the datastore.

A job trains a model bundle on the datastore's images and their latest labels of one tag (``final`` by
default), guarding the other labelled images (none of their structures may get worse, see
docs/training.md), in its own process (:class:`claraseg.train.job.FineTuneJob`); the server only starts, lists,
follows and stops jobs. An AutoML job (``/automl/{model}``) runs a ``claraseg automl`` search over the
search space declared in that bundle's ``configs/train.json``, on the same data, in its own process.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from claraseg.errors import DatastoreNotFoundError, TrainingDataError, UnknownModelError
from claraseg.io import write_text_atomic

from .datastore import DEFAULT_TAG, Datastore, check_id
from .validation import AutoMLOptions, check_job_request

AUTOML_PREFIX = "automl-"
#: The datastore's other labelled images a fine-tune job guards (validated, never trained on).
GUARD_SCANS = 4
#: Settings a client may give an AutoML job in ``{"automl": {...}}`` (as the ``claraseg automl`` flags).
AUTOML_OPTIONS = tuple(AutoMLOptions.model_fields)


class TrainJobs:
    """The job runner attached to :class:`~claraseg.server.context.ServerContext` (``ctx.jobs``).

    Args:
        models_dir: folder of model bundles (one sub-folder per model name); published versions land here.
        datastore: where training images and labels come from.
        root: folder of the jobs (one sub-folder per job).
    """

    def __init__(self, models_dir: str | Path, datastore: Datastore, root: str | Path) -> None:
        from claraseg.train.job import JobManager

        self.models_dir = Path(models_dir).resolve()
        self.datastore = datastore
        self.manager = JobManager(root)
        self.automl_root = Path(root).resolve() / "automl"
        self._procs: dict[str, Any] = {}  # started job and search processes, reaped as they exit

    def reap(self) -> None:
        """Collect the exit status of finished job processes, so none stays a zombie."""
        for key, proc in list(self._procs.items()):
            if proc.poll() is not None:
                del self._procs[key]

    def _bundle(self, model: str) -> Path:
        base = model.split("@")[0]
        check_id(base, "model")
        p = (self.models_dir / base).resolve()
        if self.models_dir not in p.parents or not (p / "configs").is_dir():
            known = sorted(d.name for d in self.models_dir.iterdir() if (d / "configs").is_dir())
            raise UnknownModelError(f"no bundle for model {model!r} in {self.models_dir}; bundles: {known}")
        return p

    def trainable(self, model: str) -> bool:
        """Whether the models folder holds a bundle for ``model`` (its base name)."""
        try:
            self._bundle(model)
            return True
        except Exception:
            return False

    def _datalist(self, images: list[str] | None, tag: str) -> list[dict[str, Any]]:
        ids = images or [i for i in self.datastore.list_images() if tag in self.datastore.label_tags(i)]
        out = []
        for image_id in ids:
            check_id(str(image_id), "image id")
            out.append(self._entry(image_id, tag))
        if not out:
            raise TrainingDataError(f"the datastore has no image with a label tagged {tag!r}; save labels first")
        return out

    def _entry(self, image_id: str, tag: str) -> dict[str, Any]:
        rec = self.datastore.label_record(image_id, tag)
        return {"image": str(self.datastore.image_path(image_id)),
                "label": str(self.datastore.label_path(image_id, tag, rec["version"])),
                "labels": rec.get("label_names", {})}

    def _guard(self, training: list[dict[str, Any]], tag: str) -> list[dict[str, Any]]:
        """The datastore's other labelled images (their latest label, of ``tag`` when they have one), at
        most :data:`GUARD_SCANS`: a fine-tune job checks it loses none of their structures."""
        used = {e["image"] for e in training}
        out = []
        for image_id in self.datastore.list_images():
            tags = self.datastore.label_tags(image_id)
            if not tags or str(self.datastore.image_path(image_id)) in used:
                continue
            out.append(self._entry(image_id, tag if tag in tags else tags[0]))
            if len(out) == GUARD_SCANS:
                break
        return out

    def list(self, kind: str) -> list[dict[str, Any]]:
        self.reap()
        if kind == "automl":
            dirs = sorted(self.automl_root.iterdir()) if self.automl_root.is_dir() else []
            return [self._automl_status(d.name) for d in dirs if d.is_dir()]
        return [j.status() for j in self.manager.list()]

    def start(self, kind: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
        """Start (or, with ``resume``: job id, continue) a fine-tune job or an AutoML search; answers its
        id and state."""
        body = check_job_request(body)  # plain data only, every id checked, before any file operation
        if kind == "automl":
            return self._start_automl(model, body)
        if body.get("resume"):
            job = self._get(check_id(str(body["resume"]), "job id")).resume()
        else:
            tag = check_id(str(body.get("tag") or DEFAULT_TAG), "label tag")
            training = self._datalist(body.get("images"), tag)
            guard = self._guard(training, tag)
            job = self.manager.create(self._bundle(model), {"training": training, "guard": guard} if guard else training,
                                      body["overrides"], name=body.get("name"),
                                      registry=self.models_dir, device=str(body.get("device") or "auto"))
            job.start()
        if job._proc is not None:
            self._procs[job.id] = job._proc
        return {"job_id": job.id, "id": job.id, "model": model, "state": job.status()["state"]}

    def status(self, job_id: str) -> dict[str, Any]:
        self.reap()
        if job_id.startswith(AUTOML_PREFIX):
            return self._automl_status(job_id)
        return self._get(job_id).status()

    def events(self, job_id: str, since: int) -> list[dict[str, Any]]:
        """A fine-tune job's event lines, or an AutoML search's trial rows, from index ``since``."""
        if job_id.startswith(AUTOML_PREFIX):
            return self._automl_status(job_id)["trials"][since:]
        return self._get(job_id).events(since)

    def stop(self, job_id: str) -> dict[str, Any]:
        if job_id.startswith(AUTOML_PREFIX):
            from claraseg.automl.api import stop_search

            stopped = stop_search(self._automl_dir(job_id))
            return {**self._automl_status(job_id), "stop_requested": stopped}
        return self._get(job_id).cancel()

    def stop_all(self, kind: str) -> list[str]:
        if kind == "automl":
            return [st["job_id"] for st in self.list("automl")
                    if st["state"] == "running" and self.stop(st["job_id"])["stop_requested"]]
        stopped = []
        for j in self.manager.list():
            if j.running():
                j.cancel()
                stopped.append(j.id)
        return stopped

    # ----- AutoML ------------------------------------------------------------------------------------
    def _automl_dir(self, job_id: str) -> Path:
        check_id(job_id, "job id")
        d = (self.automl_root / job_id).resolve()
        if self.automl_root not in d.parents or not (d / "settings.json").is_file():
            raise DatastoreNotFoundError(f"no AutoML job {job_id!r} on this server; GET /automl/ lists them")
        return d

    def _automl_status(self, job_id: str) -> dict[str, Any]:
        from claraseg.automl.api import search_status

        d = self._automl_dir(job_id)
        st = search_status(d)
        st.pop("history_png", None)
        settings = json.loads((d / "settings.json").read_text())
        return {**st, "job_id": job_id, "id": job_id, "model": settings["model"]}

    def _start_automl(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        from claraseg.automl.api import start_search
        from claraseg.automl.controller import AutoMLController, AutoMLSettings

        if body.get("resume"):  # the same search again: completed trials are kept, the budget finished
            d = self._automl_dir(str(body["resume"]))
            saved = json.loads((d / "settings.json").read_text())
            settings = AutoMLSettings(**saved["settings"])
            self._procs[d.name] = start_search(settings)
            return {"job_id": d.name, "id": d.name, "model": saved["model"], "state": "starting"}
        options = dict(body.get("automl") or {})
        bundle = self._bundle(model)
        tag = check_id(str(body.get("tag") or DEFAULT_TAG), "label tag")
        datalist = self._datalist(body.get("images"), tag)
        job_id = f"{AUTOML_PREFIX}{model.split('@')[0]}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        d = self.automl_root / job_id
        d.mkdir(parents=True)
        write_text_atomic(d / "datalist.json", json.dumps(datalist, indent=1))
        settings = AutoMLSettings(bundle=str(bundle), data=str(d / "datalist.json"), job_dir=str(d), **options)
        try:
            AutoMLController(settings)  # checks the search space and the settings before anything runs
        except Exception:
            import shutil

            shutil.rmtree(d, ignore_errors=True)
            raise
        write_text_atomic(d / "settings.json", json.dumps({"model": model, "settings": vars(settings)}, indent=1))
        self._procs[job_id] = start_search(settings)
        return {"job_id": job_id, "id": job_id, "model": model, "state": "starting"}

    def _get(self, job_id: str):
        from claraseg.train.job import JobStateError

        try:
            return self.manager.get(job_id)
        except JobStateError:
            raise DatastoreNotFoundError(f"no job {job_id!r} on this server; GET /train/ lists them") from None

    def __str__(self) -> str:
        states = [j.status()["state"] for j in self.manager.list()]
        return f"{len(states)} job(s): " + (", ".join(states) or "none")
