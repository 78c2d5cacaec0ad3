"""Federated jobs as NVFlare job folders: create one from a spec, run it in NVFlare's simulator, export it
(with NVFlare's provisioning) for a real deployment.

A job folder holds::

    federated.json          the spec (plain data, :class:`~claraseg.federated.spec.FederatedSpec`)
    nvflare/<name>/         the NVFlare job: meta.json, app_server/, app_<site>/ (config_fed_*.json)
    events.jsonl            the server's events (rounds, final evaluation, published version)
    sites/<site>/           each site's round jobs and events (simulation; at a real site: its workspace)
    workspace/              the simulator's workspace (logs; HE contexts in startup/)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import claraseg
from claraseg.errors import ClarasegError, ConfigError
from claraseg.federated.events import FedEventWriter, read_status
from claraseg.federated.spec import FederatedSpec
from claraseg.io import write_bytes_atomic, write_text_atomic

APP = "claraseg.federated.nvflare_app"
#: CKKS parameters of the HE contexts (NVFlare's HEBuilder defaults: 8192 slots x 2, scale 2^40).
HE_POLY_MODULUS = 8192
HE_COEFF_BITS = [60, 40, 40]
HE_SCALE_BITS = 40


class FederatedJobError(ClarasegError):
    """A federated job could not be created or run (see the message and the job's events)."""

    code = "federated_job_error"


def _check_inputs(spec: FederatedSpec, check_datalists: bool) -> Path:
    bundle = Path(spec.bundle).resolve()
    if not (bundle / "configs" / "metadata.json").is_file() or not (bundle / "models" / "model.pt").is_file():
        raise ConfigError(f"{bundle}: not a model bundle with weights (configs/metadata.json, models/model.pt)")
    from claraseg.train.config import read_metadata

    kind = (read_metadata(bundle).get("claraseg") or {}).get("kind")
    if kind not in ("segmentation", "deepgrow2d", "deepgrow3d", "dextr3d"):
        raise ConfigError(f"{bundle}: bundle kind {kind!r} cannot be fine-tuned (segmentation, deepgrow2d/3d, dextr3d)")
    if check_datalists:
        for site, datalist in spec.sites.items():
            if not Path(datalist).is_file():
                raise ConfigError(f"site {site!r}: datalist {datalist} does not exist")
    return bundle


def _server_config(spec: FederatedSpec, bundle: str, events: str) -> dict[str, Any]:
    n = spec.min_sites or len(spec.sites)
    if spec.he:
        generator = "nvflare.app_opt.he.model_shareable_generator.HEModelShareableGenerator"
        aggregator = {"path": "nvflare.app_opt.he.intime_accumulate_model_aggregator.HEInTimeAccumulateWeightedAggregator",
                      "args": {"expected_data_kind": "WEIGHT_DIFF", "weigh_by_local_iter": False}}
    else:
        generator = "nvflare.app_common.shareablegenerators.full_model_shareable_generator.FullModelShareableGenerator"
        aggregator = {"path": "nvflare.app_common.aggregators.intime_accumulate_model_aggregator."
                              "InTimeAccumulateWeightedAggregator",
                      "args": {"expected_data_kind": "WEIGHT_DIFF", "weigh_by_local_iter": True}}
    return {
        "format_version": 2,
        "min_clients": n,
        "num_rounds": spec.rounds,
        "task_data_filters": [],
        "task_result_filters": [],
        "components": [
            {"id": "persistor", "path": f"{APP}.BundlePersistor",
             "args": {"bundle": bundle, "save_path": "" if spec.he else "global_model.npz"}},
            {"id": "shareable_generator", "path": generator, "args": {}},
            {"id": "aggregator", **aggregator},
            {"id": "recorder", "path": f"{APP}.FederationRecorder",
             "args": {"events": events, "sites": list(spec.sites), "num_rounds": spec.rounds, "he": spec.he}},
        ],
        "workflows": [
            {"id": "scatter_and_gather", "path": "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather",
             "args": {"min_clients": n, "num_rounds": spec.rounds, "start_round": 0, "wait_time_after_min_received": 0,
                      "aggregator_id": "aggregator", "persistor_id": "persistor",
                      "shareable_generator_id": "shareable_generator", "train_task_name": "train",
                      "train_timeout": 0, "ignore_result_error": False}},
            {"id": "finalize", "path": f"{APP}.FinalizeController",
             "args": {"shareable_generator_id": "shareable_generator", "recorder_id": "recorder",
                      "publish_site": spec.publisher}},
        ],
    }


def _client_config(spec: FederatedSpec, site: str, index: int, bundle: str, site_dir: str, registry: str | None,
                   job_name: str) -> dict[str, Any]:
    args = {"bundle": bundle, "datalist": spec.sites[site], "site_dir": site_dir,
            "local_iterations": spec.local_iterations, "overrides": spec.overrides, "structures": spec.structures,
            "device": spec.device, "threads": spec.threads, "seed": spec.seed, "site_index": index,
            "publish": site == spec.publisher, "model_name": spec.name, "registry": registry, "job_name": job_name,
            "job_record": {"sites": list(spec.sites), "rounds": spec.rounds, "local_iterations": spec.local_iterations,
                           "he": spec.he}}
    config: dict[str, Any] = {
        "format_version": 2,
        "executors": [{"tasks": ["train", "finalize"],
                       "executor": {"id": "executor", "path": f"{APP}.ClarasegExecutor", "args": args}}],
        "task_result_filters": [],
        "task_data_filters": [],
        "components": [],
    }
    if spec.he:
        config["task_result_filters"] = [{"tasks": ["train"], "filters": [
            {"path": "nvflare.app_opt.he.model_encryptor.HEModelEncryptor", "args": {"weigh_by_local_iter": True}}]}]
        config["task_data_filters"] = [{"tasks": ["train", "finalize"], "filters": [
            {"path": "nvflare.app_opt.he.model_decryptor.HEModelDecryptor", "args": {}}]}]
    return config


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1))


def write_nvflare_job(spec: FederatedSpec, out: Path, *, bundle: str, events: str, site_dirs: dict[str, str],
                      registry: str | None, job_name: str) -> Path:
    """Write the NVFlare job folder ``out/<job_name>`` (meta.json, app_server, one app per site)."""
    job = out / job_name
    deploy = {"app_server": ["server"]}
    _write_json(job / "app_server" / "config" / "config_fed_server.json", _server_config(spec, bundle, events))
    for index, site in enumerate(spec.sites):
        deploy[f"app_{site}"] = [site]
        _write_json(job / f"app_{site}" / "config" / "config_fed_client.json",
                    _client_config(spec, site, index, bundle, site_dirs[site], registry, job_name))
    _write_json(job / "meta.json", {"name": job_name, "resource_spec": {}, "min_clients": spec.min_sites or len(spec.sites),
                                    "deploy_map": deploy})
    return job


def create_job(spec: FederatedSpec, job_dir: str | os.PathLike) -> Path:
    """Create a job folder for a simulation on this machine (paths resolved here). Returns the folder."""
    job_dir = Path(job_dir).resolve()
    if (job_dir / "federated.json").exists():
        raise FederatedJobError(f"{job_dir}: already holds a federated job; use another folder")
    bundle = _check_inputs(spec, check_datalists=True)
    resolved = FederatedSpec.from_dict({**spec.to_dict(), "bundle": str(bundle),
                                        "sites": {s: str(Path(d).resolve()) for s, d in spec.sites.items()},
                                        "registry": str(Path(spec.registry).resolve()) if spec.registry else None})
    job_dir.mkdir(parents=True, exist_ok=True)
    resolved.save(job_dir / "federated.json")
    write_nvflare_job(resolved, job_dir / "nvflare", bundle=str(bundle), events=str(job_dir / "events.jsonl"),
                      site_dirs={s: str(job_dir / "sites" / s) for s in resolved.sites},
                      registry=resolved.registry, job_name=job_name(job_dir))
    FedEventWriter(job_dir / "events.jsonl").emit("state", state="created", sites=list(resolved.sites),
                                                  num_rounds=resolved.rounds, he=resolved.he)
    return job_dir


def job_name(job_dir: Path) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in job_dir.name) or "federated"


def write_he_contexts(startup: Path) -> dict[str, int]:
    """TenSEAL CKKS contexts as NVFlare's HEBuilder provisions them: ``server_context.tenseal`` (public
    parameters and relinearisation keys only) and ``client_context.tenseal`` (with the secret key).
    Returns their sizes in bytes."""
    import tenseal as ts

    context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=HE_POLY_MODULUS, coeff_mod_bit_sizes=HE_COEFF_BITS,
                         encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)
    context.generate_relin_keys()
    context.global_scale = 2**HE_SCALE_BITS
    startup.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, is_client in (("server_context.tenseal", False), ("client_context.tenseal", True)):
        data = context.serialize(save_public_key=is_client, save_secret_key=is_client, save_galois_keys=False,
                                 save_relin_keys=True)
        write_bytes_atomic(startup / name, data)
        sizes[name] = len(data)
    return sizes


def allow_components(local_dir: Path) -> Path:
    """Add this package's NVFlare components to a participant's class allow-list (``local/resources.json``;
    NVFlare builds only listed component classes). Other settings of the file are kept."""
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

    path = local_dir / "resources.json"
    resources: dict[str, Any] = {"format_version": 2}
    if path.is_file():
        resources = json.loads(path.read_text())
    elif (local_dir / "resources.json.default").is_file():
        resources = json.loads((local_dir / "resources.json.default").read_text())
    allowed = list(resources.get("class_allow_list") or DEFAULT_CLASS_ALLOW_LIST)
    if APP not in allowed and "*" not in allowed:
        allowed.append(APP)
    resources["class_allow_list"] = allowed
    _write_json(path, resources)
    return path


def simulate(job_dir: str | os.PathLike, *, threads: int | None = None, timeout: float | None = None,
             log: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run a created job in NVFlare's simulator (server and each site as processes on this machine).

    Returns the job's status (:func:`claraseg.federated.events.read_status`); raises
    :class:`FederatedJobError` when the simulator fails or the job did not complete."""
    job_dir = Path(job_dir).resolve()
    spec = FederatedSpec.load(job_dir / "federated.json")
    workspace = job_dir / "workspace"
    if spec.he:
        # The simulator copies <workspace>/startup into every participant's startup kit, where NVFlare's HE
        # filters look for their contexts (a real deployment provisions them with HEBuilder instead).
        write_he_contexts(workspace / "startup")
    allow_components(workspace / "local")
    env = dict(os.environ)
    root = str(Path(claraseg.__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if spec.threads:
        env.setdefault("OMP_NUM_THREADS", str(spec.threads))
    cmd = [sys.executable, "-m", "nvflare.private.fed.app.simulator.simulator", str(job_dir / "nvflare" / job_name(job_dir)),
           "-w", str(workspace), "-c", ",".join(spec.sites), "-t", str(threads or len(spec.sites))]
    log_path = Path(log) if log else job_dir / "simulator.log"
    t0 = time.time()
    with open(log_path, "ab") as out:
        try:
            code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(job_dir),
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise FederatedJobError(f"the simulation did not finish within {timeout} s (log: {log_path})") from None
    status = read_status(job_dir)
    status["wall_time_s"] = round(time.time() - t0, 2)
    if status["state"] != "completed":
        writer = FedEventWriter(job_dir / "events.jsonl")
        if status["state"] not in ("failed", "aborted"):
            writer.emit("state", state="failed", error=f"simulator exit code {code}")
        detail = status.get("error") or _site_errors(job_dir, spec)
        raise FederatedJobError(f"the federated job did not complete (state {status['state']}, simulator exit code "
                                f"{code}): {detail or 'see ' + str(log_path)}")
    return status


def _site_errors(job_dir: Path, spec: FederatedSpec) -> str | None:
    from claraseg.train.events import read_events

    for site in spec.sites:
        for e in read_events(job_dir / "sites" / site / "events.jsonl"):
            if e.get("event") == "error":
                return f"site {site}: {e.get('message')}"
    return None


def export_job(spec: FederatedSpec, out: str | os.PathLike, *, server: str = "localhost", port: int = 8002,
               org: str = "clara", admin: str = "admin@clara.local", provision: bool = True,
               site_bundle: str | None = None, site_registry: str | None = None) -> dict[str, Any]:
    """A real deployment: NVFlare's ``project.yml`` (server, the sites, an admin; HEBuilder when the job uses
    HE), the startup kits provisioned from it (``nvflare provision``), and the job folder to submit with
    NVFlare's admin console. Paths in the job are paths on each site's machine: the bundle at
    ``site_bundle`` (default: the spec's), each site's datalist as in the spec; sites write into
    ``claraseg_federated/`` of their workspace and the server its events into its workspace."""
    out = Path(out).resolve()
    _check_inputs(spec, check_datalists=False)
    out.mkdir(parents=True, exist_ok=True)
    project_name = "claraseg_federated"
    builders: list[dict[str, Any]] = [
        {"path": "nvflare.lighter.impl.workspace.WorkspaceBuilder", "args": {"template_file": ["master_template.yml"]}},
        {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}},
        {"path": "nvflare.lighter.impl.cert.CertBuilder"},
    ]
    if spec.he:
        builders.append({"path": "nvflare.lighter.impl.he.HEBuilder",
                         "args": {"poly_modulus_degree": HE_POLY_MODULUS, "coeff_mod_bit_sizes": HE_COEFF_BITS,
                                  "scale_bits": HE_SCALE_BITS}})
    builders.append({"path": "nvflare.lighter.impl.signature.SignatureBuilder"})
    project = {"api_version": 3, "name": project_name, "description": "Clara for 3D Slicer federated fine-tuning",
               "participants": [{"name": server, "type": "server", "org": org, "fed_learn_port": port},
                                *({"name": s, "type": "client", "org": org} for s in spec.sites),
                                {"name": admin, "type": "admin", "org": org, "role": "project_admin"}],
               "builders": builders}
    import yaml

    write_text_atomic(out / "project.yml", yaml.safe_dump(project, sort_keys=False))
    bundle = site_bundle or str(Path(spec.bundle))
    job = write_nvflare_job(spec, out / "jobs", bundle=bundle, events="claraseg_federated/events.jsonl",
                            site_dirs={s: "claraseg_federated" for s in spec.sites}, registry=site_registry,
                            job_name="claraseg_federated")
    result: dict[str, Any] = {"project": str(out / "project.yml"), "job": str(job), "kits": None}
    if provision:
        cmd = [sys.executable, "-m", "nvflare.cli", "provision", "-p", str(out / "project.yml"), "-w",
               str(out / "provision"), "--force"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(out))
        if proc.returncode != 0:
            raise FederatedJobError(f"nvflare provision failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
        kits = sorted(p.parent for p in (out / "provision").glob(f"{project_name}/prod_*/*/startup"))
        for kit in kits:
            allow_components(kit / "local")
        result["kits"] = [str(k) for k in kits]
    return result
