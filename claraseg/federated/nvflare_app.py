"""The NVFlare components of a federated fine-tune job (named in the job's ``config_fed_*.json``).

Server: NVFlare's ``ScatterAndGather`` runs the FedAvg rounds with :class:`BundlePersistor` (the bundle's
weights are the initial global model) and NVFlare's weighted in-time aggregator (its HE variant on
ciphertexts); :class:`FederationRecorder` writes each round's figures to the job's events; then
:class:`FinalizeController` sends the final global model to every site once: each site reports its Dice on
its held-out split and the publishing site decrypts (HE) and publishes it as a new model version.

Site: :class:`ClarasegExecutor` runs the project's own fine-tune job for each ``train`` task
(:func:`claraseg.federated.local.fine_tune_round`) and answers with the weight difference, the number of
local steps (FedAvg's weight) and its figures; NVFlare's HE filters encrypt that answer and decrypt the
global model when the job uses HE. Nothing but the weight difference and these figures leaves the site.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.impl.controller import Controller, Task
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.model import ModelLearnable, make_model_learnable
from nvflare.app_common.abstract.model_persistor import ModelPersistor
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.fuel.utils import fobs

from claraseg.federated.events import FedEventWriter
from claraseg.io import atomic_path, write_text_atomic

TRAIN_TASK = "train"
FINALIZE_TASK = "finalize"
#: DXO meta key of a site's figures.
METRICS_KEY = "claraseg_metrics"


def _resolve(path: str, fl_ctx: FLContext) -> Path:
    """A component's path argument: absolute as given, relative to the participant's NVFlare workspace."""
    p = Path(path)
    if p.is_absolute():
        return p
    return Path(fl_ctx.get_engine().get_workspace().get_root_dir()) / p


# ----- site ------------------------------------------------------------------------------------------------
class ClarasegExecutor(Executor):
    """Runs a site's rounds: ``train`` (fine-tune from the global model) and ``finalize`` (evaluate, publish).

    Args:
        bundle: the model bundle folder (the same bundle at every site).
        datalist: this site's datalist (a path on this site's machine).
        site_dir: this site's job folder (round job folders, events).
        Relative paths (bundle, datalist, site_dir, registry) are taken from the site's NVFlare workspace.
        local_iterations: optimizer steps per round.
        overrides, structures, device, threads: of the site's fine-tune jobs.
        seed: training seed; round ``r`` of the site with index ``i`` uses ``seed + 1000 * i + r``.
        site_index: the site's index in the job.
        publish: whether this site publishes the final global model.
        model_name, registry: the published model's name and models folder (defaults: the bundle's).
        job_name: recorded in the published model's metadata.
        job_record: plain facts of the job recorded with the published model (sites, rounds, HE).
    """

    def __init__(self, bundle: str, datalist: str, site_dir: str, local_iterations: int = 20,
                 overrides: dict | None = None, structures: list | None = None, device: str = "cpu",
                 threads: int | None = 1, seed: int = 0, site_index: int = 0, publish: bool = False,
                 model_name: str | None = None, registry: str | None = None, job_name: str = "federated",
                 job_record: dict | None = None) -> None:
        super().__init__()
        self.bundle = bundle
        self.datalist = datalist
        self.site_dir_arg = site_dir
        self.local_iterations = int(local_iterations)
        self.overrides = dict(overrides or {})
        self.structures = structures
        self.device = device
        self.threads = threads
        self.seed = int(seed)
        self.site_index = int(site_index)
        self.publish = bool(publish)
        self.model_name = model_name
        self.registry = registry
        self.job_name = job_name
        self.job_record = dict(job_record or {})
        self.site_dir: Path | None = None
        self.events: FedEventWriter | None = None
        self._reference: dict[str, Any] | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self.bundle = str(_resolve(self.bundle, fl_ctx))
            self.datalist = str(_resolve(self.datalist, fl_ctx))
            if self.registry:
                self.registry = str(_resolve(self.registry, fl_ctx))
            self.site_dir = _resolve(self.site_dir_arg, fl_ctx)
            self.site_dir.mkdir(parents=True, exist_ok=True)
            self.events = FedEventWriter(self.site_dir / "events.jsonl")

    def _reference_state(self) -> dict[str, Any]:
        from claraseg.models.bundle import read_weights

        if self._reference is None:
            self._reference = read_weights(Path(self.bundle) / "models" / "model.pt")
        return self._reference

    def _weights(self, data: dict[str, Any]) -> dict[str, np.ndarray]:
        """The received global model as arrays of the network's shapes (HE decryption gives flat lists)."""
        ref = self._reference_state()
        out = {}
        for key, value in data.items():
            arr = np.asarray(value, dtype=np.float32)
            if key in ref and arr.size == ref[key].numel():
                arr = arr.reshape(tuple(ref[key].shape))
            out[key] = arr
        return out

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        try:
            if task_name == TRAIN_TASK:
                return self._train(shareable, fl_ctx, abort_signal)
            if task_name == FINALIZE_TASK:
                return self._finalize(shareable, fl_ctx)
            return make_reply(ReturnCode.TASK_UNKNOWN)
        except Exception as e:
            self.log_exception(fl_ctx, f"{task_name} failed: {e}")
            if self.events is not None:
                self.events.emit("error", site=fl_ctx.get_identity_name(), task=task_name, message=str(e))
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)

    def _train(self, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        from claraseg.federated.local import fine_tune_round, site_split

        dxo = from_shareable(shareable)
        round_ = int(shareable.get_header(AppConstants.CURRENT_ROUND) or 0)
        received = self._weights(dxo.data)
        workdir = self.site_dir / f"round_{round_}"
        if workdir.exists():  # the task came again (a restarted round): keep the earlier attempt aside
            workdir.rename(workdir.with_name(f"{workdir.name}.{int(time.time())}"))
        split = site_split(self.site_dir)  # the first round's cases, from the second round on
        result = fine_tune_round(self.bundle, split or self.datalist, received, self.local_iterations, workdir,
                                 overrides=self.overrides, structures=self.structures, device=self.device,
                                 threads=self.threads, seed=self.seed + 1000 * self.site_index + round_,
                                 should_stop=lambda: abort_signal.triggered)
        diff = {k: (result.weights[k].astype(np.float32) - received[k]).astype(np.float32) for k in received}
        metrics = {"round": round_, **result.metrics()}
        self.events.emit("site_round", site=fl_ctx.get_identity_name(), **metrics)
        out = DXO(data_kind=DataKind.WEIGHT_DIFF, data=diff,
                  meta={MetaKey.NUM_STEPS_CURRENT_ROUND: result.iterations, METRICS_KEY: metrics})
        return out.to_shareable()

    def _finalize(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        from claraseg.federated.local import evaluate_weights, prepared_path

        dxo = from_shareable(shareable)
        weights = self._weights(dxo.data)
        prepared = prepared_path(self.site_dir)
        dice, per_label = (None, {})
        if prepared is not None:
            dice, per_label = evaluate_weights(self.bundle, weights, prepared, overrides=self.overrides,
                                               device=self.device, threads=self.threads)
        published = self._publish(weights, dice, fl_ctx) if self.publish else None
        metrics = {"dice": dice, "per_label": per_label, "published": published}
        self.events.emit("evaluation", site=fl_ctx.get_identity_name(), **metrics)
        return DXO(data_kind=DataKind.METRICS, data={"dice": -1.0 if dice is None else dice},
                   meta={METRICS_KEY: metrics}).to_shareable()

    def _publish(self, weights: dict[str, np.ndarray], dice: float | None, fl_ctx: FLContext) -> dict[str, Any]:
        """Publish the final global model once (a repeated ``finalize`` returns the first publication)."""
        from claraseg.federated.local import to_state_dict
        from claraseg.models.registry import ModelRegistry
        from claraseg.train.config import read_metadata
        from claraseg.train.publish import base_name, stage_bundle
        from claraseg.train.spec import check_model_name

        marker = self.site_dir / "published.json"
        if marker.is_file():
            return json.loads(marker.read_text())
        bundle = Path(self.bundle).resolve()
        meta = read_metadata(bundle)
        name = check_model_name(self.model_name or base_name(bundle, meta))
        registry_root = Path(self.registry) if self.registry else bundle.parent
        first = self.site_dir / "round_0" / "events.jsonl"
        baseline = None
        if first.is_file():
            from claraseg.train.events import read_events

            baseline = next((e.get("dice") for e in read_events(first)
                             if e.get("event") == "validation" and e.get("baseline")), None)
        record = {"job": self.job_name, "federated": True, **self.job_record, "publish_site": fl_ctx.get_identity_name(),
                  "parent": str(bundle), "parent_version": meta.get("version"), "baseline_dice": baseline,
                  "best_dice": dice, "best_iteration": None, "overrides": self.overrides,
                  "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        staged = stage_bundle(bundle, meta, to_state_dict(weights, self._reference_state()),
                              self.site_dir / "publish" / name, record)
        registry = ModelRegistry(registry_root)
        version = registry.publish(name, staged)
        published = {"name": version, "path": str(registry.get(version).path), "registry": str(registry_root),
                     "baseline_dice": baseline, "dice": dice}
        write_text_atomic(marker, json.dumps(published))
        self.events.emit("published", site=fl_ctx.get_identity_name(), **published)
        return published


# ----- server ----------------------------------------------------------------------------------------------
class BundlePersistor(ModelPersistor):
    """The initial global model: the bundle's weights. Saves the plain global model after each round to
    ``save_path`` (relative: to the server's workspace); an HE global model is ciphertext the server
    cannot read, so nothing is saved then."""

    def __init__(self, bundle: str, save_path: str = "") -> None:
        super().__init__()
        self.bundle = bundle
        self.save_path = save_path

    def load_model(self, fl_ctx: FLContext) -> ModelLearnable:
        from claraseg.federated.local import to_numpy
        from claraseg.models.bundle import read_weights

        bundle = _resolve(self.bundle, fl_ctx)
        return make_model_learnable(to_numpy(read_weights(bundle / "models" / "model.pt")), {})

    def save_model(self, learnable: ModelLearnable, fl_ctx: FLContext) -> None:
        weights = learnable.get("weights") or {}
        if not self.save_path or not all(isinstance(v, np.ndarray) for v in weights.values()):
            return
        path = _resolve(self.save_path, fl_ctx)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **weights)


class FederationRecorder(FLComponent):
    """Writes the job's server events (``<events>``): its state and one ``round`` event per finished round
    with each site's figures, the bytes each site's update took on the wire (serialised as NVFlare sends
    it: ciphertexts with HE), the round's time and the aggregation's."""

    def __init__(self, events: str, sites: list | None = None, num_rounds: int = 0, he: bool = False) -> None:
        super().__init__()
        self.events_arg = events
        self.sites = list(sites or [])
        self.num_rounds = int(num_rounds)
        self.he = bool(he)
        self.writer: FedEventWriter | None = None
        self._round: dict[str, Any] = {}
        self._final = False

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self.writer = FedEventWriter(_resolve(self.events_arg, fl_ctx))
            self.writer.emit("state", state="running", sites=self.sites, num_rounds=self.num_rounds, he=self.he)
        elif self.writer is None:
            return
        elif event_type == AppEventType.ROUND_STARTED:
            self._round = {"round": fl_ctx.get_prop(AppConstants.CURRENT_ROUND), "t0": time.time(), "sites": {}}
        elif event_type == AppEventType.BEFORE_CONTRIBUTION_ACCEPT:
            result = fl_ctx.get_prop(AppConstants.TRAINING_RESULT)
            peer = fl_ctx.get_peer_context()
            site = peer.get_identity_name() if peer is not None else "?"
            if result is None:
                return
            dxo = from_shareable(result)
            entry = dict(dxo.get_meta_prop(METRICS_KEY) or {})
            entry["bytes_up"] = len(fobs.dumps(result))
            entry["encrypted"] = dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM) is not None
            self._round.setdefault("sites", {})[site] = entry
        elif event_type == AppEventType.BEFORE_AGGREGATION:
            self._round["ta"] = time.time()
        elif event_type == AppEventType.AFTER_AGGREGATION:
            self._round["aggregate_time_s"] = round(time.time() - self._round.get("ta", time.time()), 4)
        elif event_type == AppEventType.ROUND_DONE:
            self._emit_round()
        elif event_type == EventType.END_RUN and not self._final:
            self.writer.emit("state", state="aborted")

    def _emit_round(self) -> None:
        r = self._round
        sites = r.get("sites", {})

        def weighted(key: str) -> float | None:
            pairs = [(s.get(key), max(1, s.get("val_cases") or 1)) for s in sites.values() if s.get(key) is not None]
            return float(sum(v * w for v, w in pairs) / sum(w for _, w in pairs)) if pairs else None

        self.writer.emit("round", round=r.get("round"), num_rounds=self.num_rounds, global_dice=weighted("global_dice"),
                         local_dice=weighted("local_dice"), loss=weighted("loss"),
                         time_s=round(time.time() - r.get("t0", time.time()), 3),
                         aggregate_time_s=r.get("aggregate_time_s"),
                         bytes_up=int(sum(s.get("bytes_up", 0) for s in sites.values())), he=self.he, sites=sites)

    def finished(self, fields: dict[str, Any]) -> None:
        """Called by :class:`FinalizeController` once the final model is evaluated and published."""
        self._final = True
        if fields.get("evaluation") is not None:
            self.writer.emit("evaluation", **fields["evaluation"])
        if fields.get("published"):
            self.writer.emit("published", **fields["published"])
        self.writer.emit("state", state="completed" if fields.get("ok") else "failed", error=fields.get("error"))


class FinalizeController(Controller):
    """After the rounds: sends the final global model (ciphertext with HE) once to every site; each answers
    its Dice on its held-out split, the publishing site also publishes it (and answers the new version)."""

    def __init__(self, shareable_generator_id: str = "shareable_generator", recorder_id: str = "recorder",
                 publish_site: str = "", timeout: int = 0) -> None:
        super().__init__()
        self.shareable_generator_id = shareable_generator_id
        self.recorder_id = recorder_id
        self.publish_site = publish_site
        self.timeout = int(timeout)

    def start_controller(self, fl_ctx: FLContext) -> None:
        engine = fl_ctx.get_engine()
        self.shareable_gen = engine.get_component(self.shareable_generator_id)
        self.recorder = engine.get_component(self.recorder_id)

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
        if model is None or abort_signal.triggered:
            self.recorder.finished({"ok": False, "error": "no global model after the rounds (aborted?)"})
            return
        if self.recorder.writer is not None:
            self.recorder.writer.emit("state", state="finalizing")
        data = self.shareable_gen.learnable_to_shareable(model, fl_ctx)
        results: dict[str, Any] = {}

        def received(client_task, fl_ctx: FLContext) -> None:
            result = client_task.result
            if result is None or result.get_return_code() not in (None, ReturnCode.OK):
                results[client_task.client.name] = {"error": str(result.get_return_code() if result else "no result")}
                return
            results[client_task.client.name] = from_shareable(result).get_meta_prop(METRICS_KEY) or {}

        task = Task(name=FINALIZE_TASK, data=data, timeout=self.timeout, result_received_cb=received)
        clients = fl_ctx.get_engine().get_clients()
        self.broadcast_and_wait(task=task, fl_ctx=fl_ctx, min_responses=len(clients), abort_signal=abort_signal)
        published = (results.get(self.publish_site) or {}).get("published")
        per_site = {s: {k: v for k, v in r.items() if k != "published"} for s, r in results.items()}
        dices = [r["dice"] for r in per_site.values() if r.get("dice") is not None]
        evaluation = {"sites": per_site, "dice": float(np.mean(dices)) if dices else None}
        # A site that could not evaluate is reported in the evaluation; the job's outcome is the publication.
        error = None if published else (per_site.get(self.publish_site, {}).get("error")
                                         or f"the publishing site {self.publish_site} did not publish")
        self.recorder.finished({"ok": bool(published), "evaluation": evaluation, "published": published,
                                "error": error})

    def stop_controller(self, fl_ctx: FLContext) -> None:
        pass

    def process_result_of_unknown_task(self, client, task_name, client_task_id, result, fl_ctx) -> None:
        pass

