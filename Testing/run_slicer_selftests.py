#!/usr/bin/env python3
"""Run the extension's Slicer self-tests with a Slicer binary, one Slicer process per test.

    python Testing/run_slicer_selftests.py --slicer /opt/Slicer-5.8.1-linux-amd64/Slicer
    SLICER_EXECUTABLE=... python Testing/run_slicer_selftests.py [--only ClickSpleen] [--list]

Each test runs as Slicer's own ctest does (``slicer_add_python_unittest``): ``Slicer --no-splash --testing
--no-main-window --additional-module-paths ClaraAnnotate ClaraTrainModule --python-code "import
slicer.testing; slicer.testing.runUnitTest([...], 'Module.ModuleTest.test_X')"``. ``--testing`` makes
Slicer exit with a failure code when the test raises, ignores the user's settings and .slicerrc, and
auto-answers dialogs. Where no Slicer is given or found (CI here), every self-test is reported as
SKIPPED, by name, with the reason, and the exit code is 0. The tests are found by reading the module
files (``ScriptedLoadableModuleTest`` subclasses and their ``test_*`` methods), so this list cannot drift.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("ClaraAnnotate", "ClaraTrainModule")


def discover(root: Path = ROOT, modules=MODULES) -> list[str]:
    """``Module.TestClass.test_method`` for every self-test method of every module file."""
    names = []
    for module in modules:
        path = root / module / f"{module}.py"
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
            if "ScriptedLoadableModuleTest" not in bases:
                continue
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name.startswith("test"):
                    names.append(f"{module}.{node.name}.{item.name}")
    return names


def find_slicer(given: str | None) -> tuple[str | None, str]:
    """(executable, reason when None): ``--slicer``, then ``SLICER_EXECUTABLE``, then ``Slicer`` on PATH."""
    for candidate, origin in ((given, "--slicer"), (os.environ.get("SLICER_EXECUTABLE"), "SLICER_EXECUTABLE")):
        if candidate:
            p = Path(candidate)
            if p.is_dir():
                p = p / "Slicer"
            if p.is_file() and os.access(p, os.X_OK):
                return str(p), ""
            return None, f"{origin} = {candidate} is not an executable Slicer"
    on_path = shutil.which("Slicer")
    if on_path:
        return on_path, ""
    return None, "no Slicer executable (give --slicer PATH or set SLICER_EXECUTABLE)"


def command(slicer: str, test: str, root: Path = ROOT) -> list[str]:
    """The Slicer command line of one self-test."""
    paths = [str(root / m) for m in MODULES]
    module = test.split(".")[0]
    code = (f"import sys; sys.path.insert(0, {str(root)!r}); import slicer.testing; "
            f"slicer.testing.runUnitTest({[str(root / module)]!r}, {test!r})")
    return [slicer, "--no-splash", "--testing", "--no-main-window", "--additional-module-paths", *paths,
            "--python-code", code]


def outcome(returncode: int, output: str) -> str:
    """PASSED, FAILED or SKIPPED from the exit code and unittest's report."""
    if returncode != 0:
        return "FAILED"
    if re.search(r"OK \(skipped=\d+\)", output) or re.search(r"\.\.\. skipped", output):
        return "SKIPPED"
    if re.search(r"^OK\b", output, re.M) or "Ran 1 test" in output:
        return "PASSED"
    return "FAILED"  # exit 0 without a unittest report: the test never ran (fail closed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slicer", help="path of the Slicer executable (or set SLICER_EXECUTABLE)")
    ap.add_argument("--only", action="append", default=[], help="run tests whose name contains this (repeatable)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per test")
    ap.add_argument("--logs", default=str(ROOT / "Testing" / "logs"), help="folder for each test's Slicer output")
    ap.add_argument("--list", action="store_true", help="list the self-tests and exit")
    args = ap.parse_args(argv)

    tests = [t for t in discover() if not args.only or any(o in t for o in args.only)]
    if args.list:
        print("\n".join(tests))
        return 0
    slicer, reason = find_slicer(args.slicer)
    counts = {"PASSED": 0, "FAILED": 0, "SKIPPED": 0}
    if slicer is None:
        for t in tests:
            print(f"SKIPPED {t}: {reason}")
            counts["SKIPPED"] += 1
    else:
        logs = Path(args.logs)
        logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        for t in tests:
            t0 = time.time()
            try:
                proc = subprocess.run(command(slicer, t), capture_output=True, text=True, timeout=args.timeout, env=env)
                output, code = proc.stdout + proc.stderr, proc.returncode
            except subprocess.TimeoutExpired as e:
                output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
                output += f"\n(timed out after {args.timeout:g} s)"
                code = -1
            (logs / f"{t}.log").write_text(output)
            result = outcome(code, output)
            counts[result] += 1
            print(f"{result} {t} ({time.time() - t0:.0f} s, log {logs / (t + '.log')})", flush=True)
    print(f"{len(tests)} self-tests: {counts['PASSED']} passed, {counts['FAILED']} failed, {counts['SKIPPED']} skipped")
    return 1 if counts["FAILED"] else 0


if __name__ == "__main__":
    sys.exit(main())
