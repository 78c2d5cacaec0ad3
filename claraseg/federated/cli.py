"""``claraseg federate``: create a federated fine-tune job, run it in NVFlare's simulator, export it for a
real deployment (NVFlare provisioning), show its status, benchmark it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from claraseg.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("federate", help="federated fine-tuning across sites (NVFlare; optional homomorphic encryption)",
                       description="A model bundle + one datalist per site: FedAvg rounds of each site's own "
                                   "fine-tune job; the final global model is published as a new version.")
    fsub = p.add_subparsers(dest="federate_command", metavar="ACTION", required=True)

    def spec_args(q) -> None:
        q.add_argument("--spec", help="a federated job spec (JSON: bundle, sites, rounds, ...); options below override it")
        q.add_argument("--bundle", help="model bundle folder")
        q.add_argument("--site", action="append", default=[], metavar="NAME=DATALIST",
                       help="a site and its datalist (repeat for each site)")
        q.add_argument("--rounds", type=int)
        q.add_argument("--local-iterations", type=int, help="optimizer steps of each site per round")
        q.add_argument("-o", "--override", action="append", default=[], metavar="ID=VALUE",
                       help="the sites' training override, e.g. optimizer#lr=1e-4 (JSON values; plain data only)")
        q.add_argument("--he", action="store_true", help="encrypt the sites' updates (CKKS, TenSEAL)")
        q.add_argument("--name", help="name of the published model (default: the bundle's)")
        q.add_argument("--registry", help="models folder to publish into (default: the bundle's parent)")
        q.add_argument("--publish-site", help="the site that publishes the final model (default: the first)")
        q.add_argument("--structures", help="interactive models: comma-separated structure names to train on")
        q.add_argument("--device", help="auto, cpu, cuda or cuda:N")
        q.add_argument("--threads", type=int, help="torch CPU threads of each site")

    create = fsub.add_parser("create", help="write a job folder (spec + NVFlare job) from a bundle and site datalists")
    spec_args(create)
    create.add_argument("job_dir", help="the job folder to create")
    create.set_defaults(func=_create)

    simulate = fsub.add_parser("simulate", help="run a job in NVFlare's simulator (every site a process here)")
    simulate.add_argument("job_dir")
    simulate.add_argument("--timeout", type=float, help="seconds")
    simulate.set_defaults(func=_simulate)

    run = fsub.add_parser("run", help="create and simulate in one go")
    spec_args(run)
    run.add_argument("job_dir")
    run.set_defaults(func=_run)

    status = fsub.add_parser("status", help="a job's state, rounds and metrics as JSON (from its events)")
    status.add_argument("job_dir")
    status.set_defaults(func=_status)

    export = fsub.add_parser("export", help="a real deployment: NVFlare project.yml, provisioned startup kits, job")
    spec_args(export)
    export.add_argument("out", help="output folder")
    export.add_argument("--server", default="localhost", help="the FL server's host name (as the sites reach it)")
    export.add_argument("--port", type=int, default=8002)
    export.add_argument("--org", default="clara")
    export.add_argument("--admin", default="admin@clara.local", help="the project admin's e-mail")
    export.add_argument("--site-bundle", help="the bundle's path on the sites' machines (default: --bundle)")
    export.add_argument("--site-registry", help="models folder of the publishing site (default: the bundle's parent)")
    export.add_argument("--no-provision", action="store_true", help="write project.yml and the job only")
    export.set_defaults(func=_export)

    data_default = str(Path(__file__).resolve().parents[2].parent / "shared" / "data")
    bench = fsub.add_parser("bench", help="benchmark: 3 sites, global model vs each site alone; HE's cost")
    bench.add_argument("--data", default=data_default, help="the sample data folder")
    bench.add_argument("--bundle", default=str(Path(__file__).resolve().parents[1] / "models" / "bundles" / "deepgrow3d"))
    bench.add_argument("--workdir", default="bench-federated")
    bench.add_argument("--rounds", type=int, default=5)
    bench.add_argument("--local-iterations", type=int, default=30)
    bench.add_argument("--threads", type=int, default=1)
    bench.add_argument("--no-he", action="store_true")
    bench.add_argument("--no-alone", action="store_true")
    bench.add_argument("--out", help="write the JSON result here")
    bench.set_defaults(func=_bench)


def _parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected ID=VALUE")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def _spec(args):
    from claraseg.federated.spec import FederatedSpec

    data = {}
    if args.spec:
        data = FederatedSpec.load(args.spec).to_dict()
        if not Path(data["bundle"]).is_absolute():
            data["bundle"] = str((Path(args.spec).parent / data["bundle"]).resolve())
    if args.bundle:
        data["bundle"] = args.bundle
    if args.site:
        sites = {}
        for item in args.site:
            if "=" not in item:
                raise ConfigError(f"--site {item!r}: expected NAME=DATALIST")
            name, datalist = item.split("=", 1)
            sites[name.strip()] = datalist.strip()
        data["sites"] = sites
    for key in ("rounds", "local_iterations", "name", "registry", "publish_site", "device", "threads"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.he:
        data["he"] = True
    if args.structures:
        data["structures"] = [s.strip() for s in args.structures.split(",") if s.strip()]
    if args.override:
        data["overrides"] = {**data.get("overrides", {}), **dict(_parse_override(o) for o in args.override)}
    if "bundle" not in data or "sites" not in data:
        raise ConfigError("give --bundle and at least one --site NAME=DATALIST (or --spec)")
    return FederatedSpec.from_dict(data)


def _create(args) -> int:
    from claraseg.federated.job import create_job

    path = create_job(_spec(args), args.job_dir)
    print(json.dumps({"job": str(path), "nvflare_job": str(next((path / "nvflare").iterdir()))}))
    return 0


def _simulate(args) -> int:
    from claraseg.federated.job import simulate

    status = simulate(args.job_dir, timeout=args.timeout)
    print(json.dumps(status, indent=1))
    return 0


def _run(args) -> int:
    from claraseg.federated.job import create_job, simulate

    create_job(_spec(args), args.job_dir)
    print(json.dumps(simulate(args.job_dir), indent=1))
    return 0


def _status(args) -> int:
    from claraseg.federated.events import read_status

    print(json.dumps(read_status(args.job_dir), indent=1))
    return 0


def _export(args) -> int:
    from claraseg.federated.job import export_job

    result = export_job(_spec(args), args.out, server=args.server, port=args.port, org=args.org, admin=args.admin,
                        provision=not args.no_provision, site_bundle=args.site_bundle, site_registry=args.site_registry)
    print(json.dumps(result, indent=1))
    return 0


def _bench(args) -> int:
    from claraseg.federated.bench import run_bench

    result = run_bench(Path(args.data), Path(args.workdir).resolve(), Path(args.bundle).resolve(), rounds=args.rounds,
                       local_iterations=args.local_iterations, threads=args.threads, he=not args.no_he,
                       alone=not args.no_alone, log=lambda m: print(m, file=sys.stderr, flush=True))
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        from claraseg.io import write_text_atomic

        write_text_atomic(Path(args.out), text + "\n")
    print(json.dumps(result["summary"], indent=1))
    return 0
