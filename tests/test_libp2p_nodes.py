"""Real `flava-node` processes over libp2p: a mixed network, and a NAT'd node behind a relay.

Real processes on 127.0.0.1, real TCP + Noise + yamux (py-libp2p), real UDP, real espeak-ng
audio and DP-SGD; ``scripts/libp2p_demo.py`` is the harness (its FSDD runs are in
docs/benchmarks.md). As in the other process tests, ε = 200 over a short lifetime so that a
minute visibly learns.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flava_p2p.speech.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("libp2p_corpus")
    synthesize_corpus(
        root,
        n_speakers=16,
        takes=4,
        words=["yes", "no", "up", "down"],
        seed=11,
        holdout_fraction=0.25,
        workers=2,
    )
    return root


def _run(corpus: Path, root: Path, mode: str, seconds: float) -> dict[str, Any]:
    demo = load_script("libp2p_demo")
    args = argparse.Namespace(
        corpus=str(corpus),
        mode=mode,
        seconds=seconds,
        root=str(root),
        reference=0,
        set=["privacy.target_epsilon=200", "training.lr=0.5"],
    )
    result: dict[str, Any] = demo.run(args)
    return result


@pytest.mark.slow  # subprocesses / long run: `scripts/test.sh --slow`
def test_a_mixed_network_converges(corpus: Path, tmp_path: Path) -> None:
    """UDP-only, libp2p-only and two dual nodes: every model hears from the others (the UDP
    and libp2p islands only through the dual nodes) and all reach the same accuracy."""
    r = _run(corpus, tmp_path, "mixed", 45)
    nodes = {n["node"]: n for n in r["nodes"]}
    via = {name: {p["peer"]: p["via"] for p in n["peers"]} for name, n in nodes.items()}
    assert via["udp"].get("both0") == "udp" and via["udp"].get("libp2p") is None
    assert via["libp2p"].get("both0") == "libp2p" and via["libp2p"].get("udp") is None
    assert nodes["udp"]["libp2p_counters"] == {}
    assert nodes["libp2p"]["libp2p_counters"]["libp2p_frames_received"] > 0
    accs = [n["accuracy"] for n in r["nodes"]]
    assert all(n["deltas_received"] > 0 for n in r["nodes"]), r
    assert min(accs) > 0.5, accs  # 6 classes (4 words, unknown, silence): chance is 1/6
    assert max(accs) - min(accs) <= 0.15, accs


@pytest.mark.slow
def test_nodes_without_an_address_learn_through_a_relay(corpus: Path, tmp_path: Path) -> None:
    """A and B both sit "behind NAT" (no listening address): they find each other's circuit
    addresses through R's gossip and exchange deltas only through R's relay."""
    r = _run(corpus, tmp_path, "relay", 40)
    nodes = {n["node"]: n for n in r["nodes"]}
    for me, other in (("A", "B"), ("B", "A")):
        n = nodes[me]
        assert [a for a in n["addresses"] if "/p2p-circuit/" not in a] == []  # nothing to dial
        assert n["libp2p_counters"]["libp2p_reservations"] >= 1
        assert {p["peer"]: p["relayed"] for p in n["peers"]}.get(other) is True, n["peers"]
        assert {p["peer"]: p["relayed"] for p in n["peers"]}.get("R") is False, n["peers"]
        assert n["deltas_received"] > 0
    assert min(n["accuracy"] for n in r["nodes"]) > 0.5
