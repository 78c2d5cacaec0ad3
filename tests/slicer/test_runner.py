"""Testing/run_slicer_selftests.py: lists every self-test by name and reports each as SKIPPED where no
Slicer exists; builds the command line Slicer's own ctest uses; reads unittest's verdict fail-closed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "Testing" / "run_slicer_selftests.py"
EXPECTED = {
    "ClaraAnnotate.ClaraAnnotateTest.test_ClickSpleen", "ClaraAnnotate.ClaraAnnotateTest.test_ExtremePointsSpleen",
    "ClaraAnnotate.ClaraAnnotateTest.test_AutoSegment", "ClaraAnnotate.ClaraAnnotateTest.test_ParentTransform",
    "ClaraTrainModule.ClaraTrainModuleTest.test_FewIterationFineTune",
}


def load_runner():
    spec = importlib.util.spec_from_file_location("run_slicer_selftests", RUNNER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(*args, env=None):
    e = {k: v for k, v in os.environ.items() if k != "SLICER_EXECUTABLE"}
    e["PATH"] = "/usr/bin:/bin"  # no Slicer on it
    e.update(env or {})
    return subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True, env=e, timeout=60)


def test_without_slicer_every_self_test_is_skipped_by_name():
    r = run()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    skipped = {line.split()[1].rstrip(":") for line in lines if line.startswith("SKIPPED ")}
    assert skipped == EXPECTED
    assert all("no Slicer executable" in line for line in lines if line.startswith("SKIPPED"))
    assert lines[-1] == "5 self-tests: 0 passed, 0 failed, 5 skipped"


def test_a_wrong_slicer_path_is_named_in_the_reason(tmp_path):
    r = run("--slicer", str(tmp_path / "Slicer"))
    assert r.returncode == 0 and f"--slicer = {tmp_path / 'Slicer'} is not an executable Slicer" in r.stdout
    r = run(env={"SLICER_EXECUTABLE": "/nonexistent/Slicer"}, )
    assert "SLICER_EXECUTABLE = /nonexistent/Slicer" in r.stdout
    assert set(run("--list").stdout.split()) == EXPECTED


def test_discovery_matches_the_module_files_and_the_command_line_is_slicers():
    runner = load_runner()
    assert set(runner.discover()) == EXPECTED
    cmd = runner.command("/opt/Slicer/Slicer", "ClaraAnnotate.ClaraAnnotateTest.test_ClickSpleen")
    assert cmd[:5] == ["/opt/Slicer/Slicer", "--no-splash", "--testing", "--no-main-window", "--additional-module-paths"]
    assert cmd[5:7] == [str(ROOT / "ClaraAnnotate"), str(ROOT / "ClaraTrainModule")]
    assert cmd[7] == "--python-code" and "slicer.testing.runUnitTest(" in cmd[8]
    assert "'ClaraAnnotate.ClaraAnnotateTest.test_ClickSpleen'" in cmd[8]


def test_verdicts_fail_closed():
    runner = load_runner()
    ok = "test_ClickSpleen (ClaraAnnotate.ClaraAnnotateTest) ... ok\n\nRan 1 test in 3.2s\n\nOK\n"
    assert runner.outcome(0, ok) == "PASSED"
    assert runner.outcome(0, "test_X ... skipped 'sample CT not found'\n\nRan 1 test\n\nOK (skipped=1)\n") == "SKIPPED"
    assert runner.outcome(1, ok) == "FAILED"
    assert runner.outcome(0, "Slicer started, module failed to load\n") == "FAILED"  # nothing ran: not a pass
