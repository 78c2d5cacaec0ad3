"""``claraseg train``: start, follow, resume, cancel and list fine-tune jobs; translate MMAR configs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from claraseg.errors import ClarasegError, ConfigError


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model bundle on new labels (runs in its own process)",
                       description="Fine-tune jobs: a model bundle + a datalist of (image, label) + overrides.")
    tsub = p.add_subparsers(dest="train_command", metavar="ACTION", required=True)

    run = tsub.add_parser("run", help="start a job and show its progress")
    run.add_argument("bundle", help="model bundle folder")
    run.add_argument("datalist", help="JSON datalist: [{image, label, labels?}] or {training, validation}")
    run.add_argument("-w", "--workdir", help="job folder (default: jobs/<time stamp>)")
    run.add_argument("-o", "--override", action="append", default=[], metavar="ID=VALUE",
                     help="config override, e.g. training#max_iterations=200 or optimizer#lr=1e-3 (JSON values)")
    run.add_argument("--overrides", help="JSON/YAML file of overrides (applied before -o)")
    run.add_argument("--name", help="name of the published model (default: the bundle's)")
    run.add_argument("--registry", help="models folder to publish into (default: the bundle's parent)")
    run.add_argument("--structures", help="interactive models: comma-separated structure names to train on")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--threads", type=int, help="torch CPU threads")
    run.add_argument("--nproc", type=int, default=1, help="processes (DDP through torchrun: gloo on CPU, NCCL on GPUs)")
    run.add_argument("--detach", action="store_true", help="start and return at once (follow with 'status')")
    run.set_defaults(func=_run)

    resume = tsub.add_parser("resume", help="continue a crashed, killed or cancelled job from its last checkpoint")
    resume.add_argument("workdir")
    resume.add_argument("--detach", action="store_true")
    resume.set_defaults(func=_resume)

    status = tsub.add_parser("status", help="a job's state as JSON")
    status.add_argument("workdir")
    status.set_defaults(func=_status)

    cancel = tsub.add_parser("cancel", help="stop a running job (it can be resumed)")
    cancel.add_argument("workdir")
    cancel.set_defaults(func=_cancel)

    lst = tsub.add_parser("list", help="the jobs in a folder")
    lst.add_argument("root", nargs="?", default="jobs")
    lst.set_defaults(func=_list)

    mmar = tsub.add_parser("mmar", help="translate a Clara MMAR config_train.json into a bundle train.json")
    mmar.add_argument("config", help="the MMAR's config/config_train.json")
    mmar.add_argument("output", help="the bundle's configs/train.json to write")
    mmar.set_defaults(func=_mmar)

    data_default = str(Path(__file__).resolve().parents[2].parent / "shared" / "data")
    bc = tsub.add_parser("bench-cache", help="benchmark: epoch time with plain, cached and Smart Cache datasets")
    bc.add_argument("--data", default=data_default, help="the sample data folder")
    bc.add_argument("--workdir", default="bench-train/cache")
    bc.add_argument("--threads", type=int, default=2)
    bc.add_argument("--epochs", type=int, default=4)
    bc.add_argument("--out", help="write the JSON result here")
    bc.set_defaults(func=_bench_cache)

    ba = tsub.add_parser("bench-adapt", help="benchmark: fine-tune an interactive model on CT structures, "
                         "click-protocol Dice on held-out slices before/after")
    ba.add_argument("--data", default=data_default, help="the sample data folder")
    ba.add_argument("--bundle", default=str(Path(__file__).resolve().parents[1] / "models" / "bundles" / "deepgrow3d"))
    ba.add_argument("--structures", default="spleen,kidney_left,gallbladder,urinary_bladder,iliopsoas_left")
    ba.add_argument("--workdir", default="bench-train/adapt")
    ba.add_argument("--threads", type=int, default=2)
    ba.add_argument("--untuned", default="liver,kidney_right,stomach,aorta,vertebrae_L3",
                    help="structures never tuned: guard cases (lower halves) and tested for forgetting (upper halves)")
    ba.add_argument("--noise-seeds", type=int, default=0,
                    help="also re-test the starting model with its weights perturbed by 0.1 %% (this many draws): "
                         "the protocol's own precision")
    ba.add_argument("--no-guard", action="store_true", help="test the untuned structures without giving them to the job")
    ba.add_argument("--test-alphas", default=(), type=_alphas, metavar="A,B,...",
                    help="with -o training#wise=...: also test these interpolations of the start and the job's end "
                         "weights (reported, never used to choose)")
    ba.add_argument("--no-refit", action="store_true",
                    help="leave the DEXTR3D shape re-fit model out of the models folder (clicks without the re-fit)")
    ba.add_argument("--replay-untuned", action="store_true",
                    help="replay the first two thirds of the untuned structures' lower halves (the datalist's "
                         "replay scans); the last third is their guard")
    ba.add_argument("--budget", type=float, default=540.0, help="training time budget (s); 0: none")
    ba.add_argument("--iterations", type=int, help="optimizer steps (reproducible; the budget may stop earlier)")
    ba.add_argument("--interactions", type=int, default=5)
    ba.add_argument("--click-sequences", type=int, default=1,
                    help="also test each structure by this many click sequences (first clicks drawn inside it)")
    ba.add_argument("-o", "--override", action="append", default=[], metavar="ID=VALUE")
    ba.add_argument("--out", help="write the JSON result here")
    ba.set_defaults(func=_bench_adapt)

    packaged = Path(__file__).resolve().parents[1] / "models" / "bundles"
    bt = tsub.add_parser("bench-throughput", help="benchmark: iterations/s and peak memory of the default jobs")
    bt.add_argument("--data", default=data_default, help="the sample data folder")
    bt.add_argument("--bundles", nargs="+", default=[str(packaged / k) for k in
                                                     ("deepgrow3d", "deepgrow2d", "dextr3d", "segmentation")])
    bt.add_argument("--workdir", default="bench-train/throughput")
    bt.add_argument("--threads", type=int, default=2)
    bt.add_argument("--iterations", type=int, default=20)
    bt.add_argument("--out", help="write the JSON result here")
    bt.set_defaults(func=_bench_throughput)

    be = tsub.add_parser("bench-engine", help="benchmark: iterations/s of the training loop and of MONAI's "
                         "SupervisedTrainer on the same tiny task (medians)")
    be.add_argument("--iterations", type=int, default=60)
    be.add_argument("--repeats", type=int, default=5)
    be.add_argument("--threads", type=int, default=1)
    be.add_argument("--out", help="write the JSON result here")
    be.set_defaults(func=_bench_engine)


def _bench_engine(args) -> int:
    from claraseg.train.bench_engine import bench_engine

    result = bench_engine(iterations=args.iterations, repeats=args.repeats, threads=args.threads)
    _write_result(result, args.out)
    med = result["median_its_per_s"]
    print(f"median iterations/s: claraseg loop {med['claraseg']:.2f}, MONAI SupervisedTrainer {med['monai']:.2f} "
          f"(ratio {result['ratio_claraseg_over_monai']:.3f})")
    return 0


def _bench_cache(args) -> int:
    from claraseg.train.bench import bench_cache

    result = bench_cache(Path(args.data), Path(args.workdir), threads=args.threads, epochs=args.epochs)
    _write_result(result, args.out)
    return 0


def _alphas(text: str) -> tuple[float, ...]:
    """``--test-alphas``: comma-separated interpolation weights in (0, 1]."""
    import argparse
    import math

    try:
        out = tuple(float(a) for a in text.split(",") if a.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated numbers in (0, 1], e.g. 0.25,0.5") from None
    if any(not math.isfinite(a) or not 0 < a <= 1 for a in out):
        raise argparse.ArgumentTypeError(f"{text!r}: every weight must lie in (0, 1]")
    return out


def _bench_adapt(args) -> int:
    from claraseg.train.bench import bench_adapt

    result = bench_adapt(Path(args.data), Path(args.workdir), Path(args.bundle), args.structures.split(","),
                         threads=args.threads, budget_s=args.budget or None, interactions=args.interactions,
                         overrides=dict(parse_override(o) for o in args.override),
                         untuned=[u for u in args.untuned.split(",") if u], iterations=args.iterations,
                         guard=not args.no_guard, noise_seeds=args.noise_seeds, replay_untuned=args.replay_untuned,
                         click_sequences=args.click_sequences, refit=not args.no_refit,
                         test_alphas=args.test_alphas)
    _write_result(result, args.out)
    if args.out:
        from claraseg.train.plot import plot_adaptation

        png = plot_adaptation(result, Path(args.out).with_suffix(".png"))
        print(f"wrote {png}")
    return 0


def _bench_throughput(args) -> int:
    from claraseg.train.bench import bench_throughput

    result = bench_throughput(Path(args.data), Path(args.workdir), [Path(b) for b in args.bundles],
                              threads=args.threads, iterations=args.iterations)
    _write_result(result, args.out)
    return 0


def _write_result(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        from claraseg.io import write_text_atomic

        write_text_atomic(Path(out), text + "\n")


def parse_override(text: str) -> tuple[str, Any]:
    """``id=value`` with a JSON value (bare words are strings)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected ID=VALUE, e.g. training#max_iterations=200")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), json.loads(raw)
    except ValueError:
        return key.strip(), raw


def _run(args) -> int:
    from claraseg.train.config import load_overrides
    from claraseg.train.job import FineTuneJob

    overrides = load_overrides(args.overrides)
    overrides.update(dict(parse_override(o) for o in args.override))
    workdir = args.workdir or str(Path("jobs") / time.strftime("%Y%m%d-%H%M%S"))
    structures = [s.strip() for s in args.structures.split(",")] if args.structures else None
    job = FineTuneJob(args.bundle, args.datalist, overrides, workdir, name=args.name, registry=args.registry,
                      structures=structures, device=args.device, threads=args.threads, nproc=args.nproc).start()
    print(f"job {job.id} started in {job.workdir} (pid {job.pid()})", file=sys.stderr)
    return 0 if args.detach else follow(job)


def _resume(args) -> int:
    from claraseg.train.job import FineTuneJob

    job = FineTuneJob.open(args.workdir).resume()
    return 0 if args.detach else follow(job)


def follow(job) -> int:
    """Show a progress bar until the job ends; Ctrl-C cancels it. Returns 0 when it completed."""
    from tqdm import tqdm

    bar = tqdm(total=None, unit="it", dynamic_ncols=True, file=sys.stderr)
    try:
        for e in job.follow(poll=0.5):
            kind = e.get("event")
            if kind == "state":
                bar.set_description(e["state"])
                if e.get("max_iterations"):
                    bar.total = e["max_iterations"]
                    bar.n = e.get("iteration", 0)
                    bar.refresh()
            elif kind == "iteration":
                bar.total = e["max_iterations"]
                bar.n = e["iteration"]
                bar.set_postfix(loss=f"{e['loss']:.4f}", lr=f"{e['lr']:.2e}")
            elif kind == "validation":
                bar.write(f"validation at iteration {e['iteration']}: Dice {e['dice']:.4f}"
                          + (" (starting model)" if e.get("baseline") else ""))
            elif kind == "error":
                bar.write(f"error: {e['message']}")
            elif kind == "published":
                bar.write(f"published {e['name']} ({e.get('path')})")
    except KeyboardInterrupt:
        bar.write("cancelling (resume later with: claraseg train resume " + str(job.workdir) + ")")
        job.cancel()
    finally:
        bar.close()
    status = job.status()
    print(json.dumps({k: status[k] for k in ("state", "iteration", "baseline_dice", "best_dice", "published",
                                             "curves", "error")}, indent=1))
    if status["state"] == "failed" and status.get("error"):
        raise ClarasegError(status["error"]["message"])
    return 0 if status["state"] == "completed" else 1


def _status(args) -> int:
    from claraseg.train.job import FineTuneJob

    print(json.dumps(FineTuneJob.open(args.workdir).status(), indent=1))
    return 0


def _cancel(args) -> int:
    from claraseg.train.job import FineTuneJob

    print(json.dumps(FineTuneJob.open(args.workdir).cancel(), indent=1))
    return 0


def _list(args) -> int:
    from claraseg.train.job import JobManager

    for job in JobManager(args.root).list():
        s = job.status()
        print(f"{job.id}\t{s['state']}\titeration {s['iteration']}\tbest Dice {s['best_dice']}\t{s['published'] or ''}")
    return 0


def _mmar(args) -> int:
    from claraseg.train.config import read_config_file
    from claraseg.train.mmar import translate_mmar

    result = translate_mmar(read_config_file(args.config))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    from claraseg.io import write_text_atomic

    write_text_atomic(out, json.dumps(result.config, indent=2) + "\n")
    print(f"wrote {out}")
    for d in result.dropped:
        print(f"  not translated (the job runner provides it): {d}")
    for n in result.notes:
        print(f"  note: {n}")
    return 0
