"""Four real `flava-node run` processes on 127.0.0.1: discovery, learning, kill -9 and rejoin.

Real UDP sockets (ephemeral ports), real DP-SGD (Opacus), real NaCl, real espeak-ng audio.
The budget is ε = 200 over a 400-step lifetime so that a minute of training on ~120 clips per
node visibly learns: this test exercises the machinery (clipping, noise, accounting, ledger),
not the privacy/utility trade-off, which the benchmarks measure at ε ≤ 8.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flava_p2p.cli.node import main as node_main

N = 4


def wait_for(what: str, check: Callable[[], bool], timeout: float, cluster: Any) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(1.0)
    logs = "\n".join(f"--- node {i}\n{cluster.tail(i)}" for i in range(N))
    raise AssertionError(f"timed out waiting for: {what}\n{logs}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from flava_p2p.speech.synth import synthesize_corpus
    from flava_p2p.testing import cluster as lc

    root = tmp_path_factory.mktemp("cluster")
    synthesize_corpus(
        root / "corpus",
        n_speakers=24,
        takes=5,
        words=["yes", "no", "up", "down"],
        seed=5,
        holdout_fraction=0.17,
        workers=2,
    )
    homes = lc.prepare(
        root / "corpus",
        root,
        N,
        overrides={"privacy": {"target_epsilon": 200.0}, "training": {"lr": 0.5}},
    )
    c = lc.Cluster(homes)
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()


@pytest.mark.slow  # subprocesses / long run: `scripts/test.sh --slow`
def test_discover_learn_crash_rejoin(cluster: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """All discover all; deltas flow; accuracy ≫ chance; kill -9 + restart keeps PeerID and ε."""
    ids = [cluster.status(i)["peer_id"] for i in range(N)]
    wait_for(
        "every node has every other node in its view",
        lambda: all(
            {p["peer_id"] for p in cluster.status(i)["peers"]} == set(ids) - {ids[i]}
            for i in range(N)
        ),
        60,
        cluster,
    )

    chance = 1 / 6
    wait_for(
        "every node's held-out accuracy ≥ 2.4 × chance",
        lambda: all(
            (cluster.status(i)["accuracy"] or {}).get("accuracy", 0) >= 2.4 * chance
            for i in range(N)
        ),
        150,
        cluster,
    )
    for i in range(N):
        s = cluster.status(i)
        assert s["counters"].get("deltas_received", 0) > 0
        assert s["privacy"]["example_level"]["unit"].startswith("example")
        protects = s["privacy"]["example_level"]["protects"]
        assert protects.startswith("the learned head") and "speech_embedding@" in protects
        assert s["model"]["head"].startswith("embed_linear")

    # flava-node status reads the same API
    assert node_main(["status", "--home", str(cluster.homes[1]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["peer_id"] == ids[1]

    victim = 2
    eps_before = cluster.status(victim)["privacy"]["example_level"]["epsilon"]
    time.sleep(1.5)  # let it take more steps after we read ε: the ledger must cover them too
    cluster.kill(victim)  # SIGKILL: no chance to save anything
    cluster.start(victim)
    s = cluster.wait_ready(victim)
    assert s["peer_id"] == ids[victim]
    assert s["privacy"]["example_level"]["epsilon"] >= eps_before
    wait_for(
        "the restarted node rejoins and receives deltas",
        lambda: (
            cluster.status(victim)["counters"].get("deltas_received", 0) > 0
            and len(cluster.status(victim)["peers"]) >= 2
        ),
        60,
        cluster,
    )
    wait_for(
        "the others see the restarted node alive",
        lambda: (
            sum(
                ids[victim] in {p["peer_id"] for p in cluster.status(i)["peers"]}
                for i in range(N)
                if i != victim
            )
            >= 2
        ),
        60,
        cluster,
    )
    eps_after = cluster.status(victim)["privacy"]["example_level"]["epsilon"]
    assert eps_after >= eps_before
