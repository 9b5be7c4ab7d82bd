#!/usr/bin/env python3
"""The same 4-node network as real `flava-node` processes and in the simulator (issue 6).

Real: ``local_cluster.prepare`` (speaker partition, node 0 bootstrap, DP-SGD, clipping) with the
integration test's settings (ε = 200 planned over 400 steps, lr 0.5), run for ``--seconds`` of
wall time; each node's held-out accuracy and round are read from /status. Simulated: the same
corpus split, model, optimiser, gossip settings and privacy plan, ``discovered`` topology from
node 0, run for as many rounds as the real nodes completed; accuracy on the same held-out
(validation + test) speakers. The corpus is the integration test's (24 speakers × 4 words +
unknown + silence × 5 takes, seed 5), generated into ``--corpus`` if missing. Prints JSON.

    .venv/bin/python scripts/sim_vs_real.py --corpus data/synth_it --seconds 90
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from flava_p2p.sim.runner import run_scenario
from flava_p2p.sim.scenario import Scenario
from flava_p2p.testing import cluster as local_cluster

EPSILON, LR = 200.0, 0.5  # tests/test_node_integration.py


def ensure_corpus(corpus: Path) -> None:
    if (corpus / "corpus.json").is_file():
        return
    from flava_p2p.speech.synth import synthesize_corpus

    synthesize_corpus(
        corpus,
        n_speakers=24,
        takes=5,
        words=["yes", "no", "up", "down"],
        seed=5,
        holdout_fraction=0.17,
    )


def run_real(corpus: Path, n: int, seconds: float) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        homes = local_cluster.prepare(
            corpus,
            Path(tmp),
            n,
            overrides={"privacy": {"target_epsilon": EPSILON}, "training": {"lr": LR}},
        )
        cluster = local_cluster.Cluster(homes)
        try:
            cluster.start_all()
            time.sleep(seconds)
            out = []
            for i in range(n):
                s = cluster.status(i)
                acc = (s.get("accuracy") or {}).get("accuracy")
                out.append({"round": s["round"], "accuracy": acc})
            return out
        finally:
            cluster.stop_all()


def run_sim(corpus: Path, n: int, rounds: int, seed: int) -> dict[str, object]:
    sc = Scenario.model_validate(
        {
            "name": "four_nodes",
            "nodes": n,
            "rounds": rounds,
            "gossip": {
                "period_s": 2.0,
                "shuffle_period_s": 1.0,
                "ping_period_s": 0.5,
                "fanout": 2,
                "aggregation": "clipped",
            },
            "topology": {"kind": "discovered"},
            "data": {"corpus": str(corpus), "partition": "speaker", "eval_split": "heldout"},
            "learner": {
                "kind": "real",
                "model": "embed_linear",  # what scripts/local_cluster.py runs
                "threads": 2,
                "training": {
                    "batch_size": 32,
                    "lr": LR,
                    "local_steps": 8,
                    "spec_augment": False,
                },
            },
            "privacy": {"epsilon": EPSILON, "planned_steps": 400},
            "metrics": {"plots": False},
        }
    )
    return run_scenario(sc, seed=seed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", default="data/synth_it")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    corpus = Path(args.corpus)
    ensure_corpus(corpus)
    real = run_real(corpus, args.nodes, args.seconds)
    rounds = max(1, round(sum(int(r["round"]) for r in real) / len(real)))  # type: ignore[call-overload]
    sim = run_sim(corpus, args.nodes, rounds, args.seed)
    accs = [float(r["accuracy"]) for r in real if r["accuracy"] is not None]  # type: ignore[arg-type]
    print(
        json.dumps(
            {
                "real": {
                    "per_node": real,
                    "mean_accuracy": sum(accs) / len(accs) if accs else None,
                    "worst_accuracy": min(accs) if accs else None,
                },
                "sim": {
                    "rounds": rounds,
                    "mean_accuracy": sim["final"]["honest_mean_acc"],  # type: ignore[index]
                    "worst_accuracy": sim["final"]["honest_worst_acc"],  # type: ignore[index]
                    "wall_seconds": sim["wall_seconds"],
                },
            }
        )
    )


if __name__ == "__main__":
    main()
