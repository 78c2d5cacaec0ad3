"""Fine-tuning jobs behind ``/train/``: bundles from the models folder, data from the datastore.

A job trains a model bundle on the datastore's images and their latest labels of one tag (``final`` by
default), in its own process (:class:`claraseg.train.job.FineTuneJob`); the server only starts, lists,
follows and stops jobs. AutoML studies are run with ``claraseg automl`` and are not started from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from claraseg.errors import NotAvailableError, TrainingDataError, UnknownModelError

from .datastore import DEFAULT_TAG, Datastore, check_id


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

    def _bundle(self, model: str) -> Path:
        base = model.split("@")[0]
        check_id(base, "model")
        p = (self.models_dir / base).resolve()
        if self.models_dir not in p.parents or not (p / "configs").is_dir():
            known = sorted(d.name for d in self.models_dir.iterdir() if (d / "configs").is_dir())
            raise UnknownModelError(f"no bundle for model {model!r} in {self.models_dir}; bundles: {known}")
        return p

    def _datalist(self, images: list[str] | None, tag: str) -> list[dict[str, Any]]:
        ids = images or [i for i in self.datastore.list_images() if tag in self.datastore.label_tags(i)]
        out = []
        for image_id in ids:
            check_id(str(image_id), "image id")
            rec = self.datastore.label_record(image_id, tag)
            out.append({"image": str(self.datastore.image_path(image_id)),
                        "label": str(self.datastore.label_path(image_id, tag, rec["version"])),
                        "labels": rec.get("label_names", {})})
        if not out:
            raise TrainingDataError(f"the datastore has no image with a label tagged {tag!r}; save labels first")
        return out

    def list(self, kind: str) -> list[dict[str, Any]]:
        self._only_train(kind)
        return [j.status() for j in self.manager.list()]

    def start(self, kind: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
        """Start (or, with ``resume``: job id, continue) a fine-tune job; answers its id and state."""
        self._only_train(kind)
        if body.get("resume"):
            job = self.manager.get(check_id(str(body["resume"]), "job id")).resume()
        else:
            tag = check_id(str(body.get("tag") or DEFAULT_TAG), "label tag")
            job = self.manager.create(self._bundle(model), self._datalist(body.get("images"), tag),
                                      body.get("overrides") or {}, name=body.get("name"),
                                      registry=self.models_dir, device=str(body.get("device") or "auto"))
            job.start()
        return {"job_id": job.id, "id": job.id, "model": model, "state": job.status()["state"]}

    def status(self, job_id: str) -> dict[str, Any]:
        return self._get(job_id).status()

    def events(self, job_id: str, since: int) -> list[dict[str, Any]]:
        return self._get(job_id).events(since)

    def stop(self, job_id: str) -> dict[str, Any]:
        return self._get(job_id).cancel()

    def stop_all(self, kind: str) -> list[str]:
        self._only_train(kind)
        stopped = []
        for j in self.manager.list():
            if j.running():
                j.cancel()
                stopped.append(j.id)
        return stopped

    def _get(self, job_id: str):
        from claraseg.errors import DatastoreNotFoundError
        from claraseg.train.job import JobStateError

        try:
            return self.manager.get(job_id)
        except JobStateError:
            raise DatastoreNotFoundError(f"no job {job_id!r} on this server; GET /train/ lists them") from None

    @staticmethod
    def _only_train(kind: str) -> None:
        if kind != "train":
            raise NotAvailableError("AutoML studies are not started through the server; run `claraseg automl` "
                                    "on the server machine (its trials publish models the server then lists)")

    def __str__(self) -> str:
        states = [j.status()["state"] for j in self.manager.list()]
        return f"{len(states)} job(s): " + (", ".join(states) or "none")
