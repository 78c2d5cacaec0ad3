"""Two controllers join one study on a real PostgreSQL server (as workers on two machines would)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[2]


def _pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server on 127.0.0.1 (trust auth), stopped at the end."""
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]')")
    run_as: list[str] = []
    # Not under pytest's tmp folder: as root that one is private, and the server runs as another user.
    root = Path(tempfile.mkdtemp(prefix="claraseg-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        run_as = ["runuser", "-u", "postgres", "--"]
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data = root / "data"
    port = _free_port()
    subprocess.run([*run_as, initdb, "-D", str(data), "-A", "trust", "-U", "automl"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    subprocess.run([*run_as, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "server.log"), "-w", "start"],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="automl", dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE automl")
        yield f"postgresql://automl@127.0.0.1:{port}/automl"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


def _study_has_trials(url: str) -> bool:
    try:
        return bool(optuna.load_study(study_name="automl", storage=url).get_trials(deepcopy=False))
    except KeyError:
        return False


def test_two_controllers_share_a_postgres_study(tmp_path, postgres_url, make_bundle, phantom_datalist):
    bundle = make_bundle(optimizer_search=[{"domain": "lr", "type": "float", "args": ["lr"],
                                            "targets": [0.003, 0.03], "log": True}], iterations=10, val_interval=10)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = []
    for n in range(2):  # two "machines": own job folders, own seeds, one storage
        cmd = [sys.executable, "-m", "claraseg", "automl", "--bundle", str(bundle), "--data", str(phantom_datalist),
               "--trials", "3", "--workers", "1", "--job-dir", str(tmp_path / f"machine{n}"), "--runner", "tiny",
               "--storage", postgres_url, "--seed", str(n), "--pruner", "none"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        deadline = time.time() + 60
        while n == 0 and time.time() < deadline and not _study_has_trials(postgres_url):
            time.sleep(0.3)  # the second machine joins a study that exists
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    trials = optuna.load_study(study_name="automl", storage=postgres_url).get_trials()
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    # Each controller checks the shared budget before starting a trial; started together they may overshoot by one.
    assert 3 <= len(finished) <= 4 and len(finished) == len(trials)
    assert len({t.user_attrs["controller_pid"] for t in finished}) == 2  # both machines ran trials
    assert sum(bool(t.user_attrs.get("default")) for t in trials) == 1  # one default trial for the whole study
    assert "postgresql://automl@127.0.0.1" in (tmp_path / "machine0" / "automl.json").read_text()
