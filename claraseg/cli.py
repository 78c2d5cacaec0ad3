"""The `claraseg` command. Each part registers its own sub-commands in ``<part>/cli.py``
(a ``register(subparsers)`` function), imported lazily so a missing optional dependency only
disables its own commands."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from claraseg.errors import ClarasegError

#: Parts that contribute sub-commands, in help order.
COMMAND_MODULES = (
    "claraseg.io.cli",         # info, convert, phantom, demo
    "claraseg.server.cli",     # serve
    "claraseg.engine.cli",     # predict
    "claraseg.evaluate.cli",   # eval, bench
    "claraseg.models.cli",     # pretrain (default weights)
    "claraseg.runtimes.cli",   # export, bench-runtimes
    "claraseg.train.cli",      # train
    "claraseg.automl.cli",     # automl
    "claraseg.federated.cli",  # federate
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="claraseg", description="Clara for 3D Slicer: engine, server and tools")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            # Only hide parts that are not there (or whose optional dependency is missing).
            if e.name and (name == e.name or name.startswith(e.name + ".") or not e.name.startswith("claraseg")):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ClarasegError as e:
        print(f"claraseg: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("claraseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
