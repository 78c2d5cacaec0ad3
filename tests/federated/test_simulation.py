"""Real simulated federations (NVFlare's simulator, 2 sites x 2 rounds of the project's own fine-tune jobs on
a crop of the sample CT), plain and with homomorphic encryption: the global model changes, is FedAvg of the
sites' updates (HE: after decryption, within CKKS's precision), and is published exactly once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from claraseg.train.events import read_events

from .conftest import LOCAL_ITERATIONS, ROUNDS, SITES

#: CKKS with a 2^40 scale: a decrypted weighted average of a few updates is off by ~1e-8 (float32 rounding
#: of the weights is as large); one round of these tiny jobs changes weights by ~1e-4.
HE_TOLERANCE = 1e-6


def weights(path: Path) -> dict[str, np.ndarray]:
    from claraseg.federated.local import to_numpy
    from claraseg.models.bundle import read_weights

    return to_numpy(read_weights(path))


def site_round(job: Path, site: str, r: int) -> tuple[dict, dict]:
    """(global weights the site received, its weights after local training) in round ``r``: the round's job
    started from a copy of the bundle holding the received weights and validated once, at its end, so its
    best checkpoint holds its last weights."""
    folder = job / "sites" / site / f"round_{r}"
    received = folder / "start" / "deepgrow3d" / "models" / "model.pt"
    return weights(received), weights(folder / "checkpoints" / "best.pt")


def fedavg(job: Path, r: int) -> dict[str, np.ndarray]:
    """Plain FedAvg of round ``r``: the received global model plus the iteration-weighted mean update."""
    rounds = {s: site_round(job, s, r) for s in SITES}
    base = rounds[next(iter(SITES))][0]
    n = {s: LOCAL_ITERATIONS for s in SITES}
    total = sum(n.values())
    return {k: base[k] + sum(n[s] * (local[k] - received[k]) for s, (received, local) in rounds.items()) / total
            for k in base}


def max_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def published_once(run: dict) -> dict[str, np.ndarray]:
    status, job, bundle = run["status"], run["job"], run["bundle"]
    assert status["state"] == "completed", status
    assert status["published"] == "deepgrow3d@v2"
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["deepgrow3d", "deepgrow3d@v2"]
    server = read_events(job / "events.jsonl")
    assert sum(e["event"] == "published" for e in server) == 1
    publisher, other = list(SITES)
    assert sum(e["event"] == "published" for e in read_events(job / "sites" / publisher / "events.jsonl")) == 1
    assert not any(e["event"] == "published" for e in read_events(job / "sites" / other / "events.jsonl"))
    from claraseg.train.config import read_metadata

    meta = read_metadata(bundle.parent / "deepgrow3d@v2")
    record = meta["claraseg"]["fine_tune"]
    assert record["federated"] is True and record["sites"] == list(SITES) and record["rounds"] == ROUNDS
    return weights(bundle.parent / "deepgrow3d@v2" / "models" / "model.pt")


def test_rounds_and_metrics_are_recorded(federations):
    for variant, run in federations.items():
        status = run["status"]
        assert [r["round"] for r in status["rounds"]] == list(range(ROUNDS)), variant
        for r in status["rounds"]:
            assert set(r["sites"]) == set(SITES)
            for figures in r["sites"].values():
                assert figures["iterations"] == LOCAL_ITERATIONS
                assert 0 <= figures["global_dice"] <= 1 and 0 <= figures["local_dice"] <= 1
                assert figures["bytes_up"] > 0 and figures["encrypted"] is (variant == "he")
            assert r["global_dice"] is not None and r["time_s"] > 0
        final = status["final"]["sites"]
        assert set(final) == set(SITES) and all(0 <= f["dice"] <= 1 for f in final.values())
        # The Dice a site measured for the global model it received in round 1 is its held-out split's.
        for site in SITES:
            held = read_events(run["job"] / "sites" / site / "round_0" / "events.jsonl")
            assert any(e["event"] == "validation" and e.get("baseline") for e in held)


def test_plain_fedavg_is_published_once(federations):
    run = federations["plain"]
    published = published_once(run)
    initial = weights(run["bundle"] / "models" / "model.pt")
    assert max_diff(published, initial) > 1e-4, "the global model did not change"
    # Round 1 started from FedAvg of round 0 at both sites; the published model is FedAvg of round 1.
    for site in SITES:
        assert max_diff(site_round(run["job"], site, 1)[0], fedavg(run["job"], 0)) < 1e-6
    assert max_diff(published, fedavg(run["job"], ROUNDS - 1)) < 1e-6
    saved = np.load(run["job"] / "workspace" / "server" / "global_model.npz")
    assert max_diff(dict(saved), published) < 1e-6


def test_he_rounds_decrypt_to_the_fedavg_average(federations):
    run = federations["he"]
    published = published_once(run)
    initial = weights(run["bundle"] / "models" / "model.pt")
    assert max_diff(published, initial) > 1e-4, "the global model did not change"
    change = max_diff(fedavg(run["job"], 0), site_round(run["job"], "site-a", 0)[0])
    for site in SITES:
        error = max_diff(site_round(run["job"], site, 1)[0], fedavg(run["job"], 0))
        assert error < HE_TOLERANCE < change / 10, (error, change)
    assert max_diff(published, fedavg(run["job"], ROUNDS - 1)) < HE_TOLERANCE
    # The server held ciphertexts only: its persistor had no plain model to save.
    assert not (run["job"] / "workspace" / "server" / "global_model.npz").exists()
    plain, he = federations["plain"]["status"]["rounds"][0], run["status"]["rounds"][0]
    assert he["bytes_up"] > 10 * plain["bytes_up"]


def test_he_and_plain_federations_agree(federations):
    """Deterministic site training: both runs' sites trained the same round-0 updates, so the global
    models they started round 1 from agree within CKKS's precision."""
    for site in SITES:
        plain = site_round(federations["plain"]["job"], site, 1)[0]
        he = site_round(federations["he"]["job"], site, 1)[0]
        assert max_diff(plain, he) < HE_TOLERANCE

