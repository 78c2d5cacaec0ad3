"""``claraseg automl``: hyper-parameter and architecture search over fine-tune jobs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    """Add the ``automl`` sub-command."""
    p = sub.add_parser(
        "automl", help="search hyper-parameters and architectures over fine-tune jobs (Optuna)",
        description="Run trials (fine-tune jobs) with settings drawn from the 'search' elements of the "
                    "bundle's training config; the study is stored in the job folder (SQLite) or --storage, "
                    "and the same command resumes it or, on another machine, joins it.")
    p.add_argument("--bundle", required=True, help="MONAI bundle folder whose configs/train.json declares 'search' elements")
    p.add_argument("--data", required=True, help="datalist JSON ({'training': [{image, label}...], 'validation': [...]})")
    p.add_argument("--job-dir", default=None, help="output folder (default: ./automl_<study>)")
    p.add_argument("--trials", type=int, default=None, help="trial budget of the whole study (default 8 without --timeout)")
    p.add_argument("--timeout", type=float, default=None, help="time budget in seconds: no trial starts after it")
    p.add_argument("--workers", type=int, default=1, help="trials in parallel (CPU slots)")
    p.add_argument("--devices", default=None, help="one worker per device instead, e.g. cuda:0,cuda:1")
    p.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default sqlite:///<job-dir>/study.db); a postgresql:// URL lets "
                        "controllers on several machines share the study")
    p.add_argument("--study", default="automl", help="study name inside the storage")
    p.add_argument("--sampler", default="auto", choices=["auto", "tpe", "grid", "random"],
                   help="auto: grid for enum-only spaces, TPE otherwise")
    p.add_argument("--pruner", default="median", choices=["median", "percentile", "hyperband", "none"])
    p.add_argument("--startup-trials", type=int, default=2, help="completed trials before pruning and TPE start")
    p.add_argument("--warmup-steps", type=int, default=0, help="iterations of a trial before it can be pruned")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runner", default="auto", help="trial runner: train (fine-tune jobs), tiny, or auto")
    p.add_argument("--trial-timeout", type=float, default=None, help="seconds after which a trial is killed (failed)")
    p.add_argument("--no-default-trial", action="store_true", help="do not run the config's own settings as trial 0")
    p.add_argument("--handler", action="append", default=[], help="extra handler module:Class (repeatable)")
    p.add_argument("--validate-only", action="store_true", help="check the search space and data, print it, run nothing")
    p.add_argument("--report-only", action="store_true", help="write the report of an existing study, run nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from claraseg.automl.controller import AutoMLController, AutoMLSettings, install_signal_handlers
    from claraseg.automl.handlers import ReportHandler, TensorBoardHandler, load_handler, write_report

    trials = args.trials if args.trials is not None or args.timeout is not None else 8
    settings = AutoMLSettings(
        bundle=args.bundle, data=args.data, job_dir=args.job_dir or f"automl_{args.study}", trials=trials,
        timeout_s=args.timeout, workers=args.workers, devices=args.devices, threads_per_trial=args.threads,
        storage=args.storage, study=args.study, sampler=args.sampler, pruner=args.pruner,
        startup_trials=args.startup_trials, warmup_steps=args.warmup_steps, seed=args.seed, runner=args.runner,
        default_trial=not args.no_default_trial, trial_timeout_s=args.trial_timeout)
    handlers = [ReportHandler(), TensorBoardHandler(), *(load_handler(h) for h in args.handler)]
    controller = AutoMLController(settings, handlers)
    if args.validate_only:
        print(json.dumps({"search_space": controller.space.describe(), "runner": controller.runner.name,
                          "slots": controller.slots}, indent=1, default=str))
        return 0
    if args.report_only:
        study = controller.open_study()
        print(write_report(study, controller.space, Path(settings.job_dir))["line"])
        return 0
    install_signal_handlers(controller)
    summary = controller.run()
    print(summary["line"])
    print(f"report: {Path(settings.job_dir) / 'trials.md'}, {Path(settings.job_dir) / 'history.png'}, "
          f"best overlay: {Path(settings.job_dir) / 'best_overlay.json'}")
    return 130 if summary.get("interrupted") else 0
