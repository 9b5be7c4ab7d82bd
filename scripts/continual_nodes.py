#!/usr/bin/env python3
"""Task cards and continuous learning with real `flava-node` processes on 127.0.0.1.

Two experiments on an imported corpus (default: FSDD, test speakers from its testing list),
every node with example-level DP accounted per clip under one task card:

``subsets``: two nodes with *disjoint label subsets* (one holds the first half of the card's
labels, the other the rest, from every training speaker) against two nodes holding *all*
labels (the same training speakers split between them). Each node's accuracy on all labels,
held-out speakers, after the same wall time.

``arrival``: one node starts with half of its clips; once they have all retired (per-clip
budget spent) the other half is copied into its --data folder while it runs; it is killed
with SIGKILL half-way through learning them and restarted. Status is polled every second: the
worst clip's ε must never exceed the card's bound, before or after the crash.

    .venv/bin/python scripts/continual_nodes.py subsets --corpus data/fsdd
    .venv/bin/python scripts/continual_nodes.py arrival --corpus data/fsdd

Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from flava_p2p.learning.checkpoint import load_checkpoint
from flava_p2p.speech.dataset import Utterance, scan_corpus
from flava_p2p.testing.cluster import Cluster, prepare_homes


def write_card(root: Path, labels: list[str], planned: int, eps: float) -> Path:
    """A task card for the corpus' labels with a short lifetime (so a run takes minutes)."""
    root.mkdir(parents=True, exist_ok=True)
    card = root / "task.yaml"
    card.write_text(
        yaml.safe_dump(
            {
                "name": "continual-check",
                "kind": "keyword_spotting",
                "labels": labels,
                "privacy": {"target_epsilon": eps, "planned_steps": planned},
            }
        )
    )
    return card


NODE_SETTINGS: dict[str, Any] = {
    "training": {"batch_size": 64, "lr": 1.0, "local_steps": 10, "threads": 1},
    "data": {"watch_period_s": 2.0},
}


def _node_overrides(root: Path, min_peers: int = 1) -> dict[str, Any]:
    return {
        "training": NODE_SETTINGS["training"],
        # No budget spent before a peer is there to merge with (label-subset devices).
        "gossip": {"train_min_peers": min_peers},
        "data": {
            "root": "data",
            "eval_root": str(root.resolve() / "eval"),
            "cache_dir": None,
            "watch_period_s": 2.0,
        },
    }


def _accuracy(s: dict[str, Any]) -> float | None:
    acc = s.get("accuracy")
    return None if not acc else float(acc["accuracy"])


def run_pair(
    shares: list[list[Utterance]],
    held_out: list[Utterance],
    root: Path,
    labels: list[str],
    card: Path,
    seconds: float,
    min_peers: int = 1,
) -> list[dict[str, Any]]:
    """Two nodes on ``shares`` for ``seconds``; their final status."""
    shutil.rmtree(root, ignore_errors=True)  # fresh homes: no checkpoint from an earlier run
    homes = prepare_homes(
        shares,
        held_out,
        root,
        labels=labels,
        task=card,
        overrides=_node_overrides(root, min_peers),
    )
    cluster = Cluster(homes)
    try:
        cluster.start_all()
        time.sleep(seconds)
        out = []
        for i in range(len(homes)):
            s = cluster.status(i)
            ex = s["privacy"]["example_level"] or {}
            out.append(
                {
                    "node": i,
                    "clips_per_label": s["data"]["clips_per_label"],
                    "accuracy_all_labels": _accuracy(s),
                    "round": s["round"],
                    "peers": len(s["peers"]),
                    "worst_clip_epsilon": ex.get("epsilon"),
                    "retired_clips": ex.get("retired_clips"),
                    "deltas_received": s["counters"].get("deltas_received", 0),
                    "penalties": {
                        k: v for k, v in s["counters"].items() if k.startswith("penalty_")
                    },
                }
            )
        return out
    finally:
        cluster.stop_all()


def subsets(args: argparse.Namespace) -> dict[str, Any]:
    scan = scan_corpus(args.corpus)
    labels = scan.labels
    train = [u for u in scan.utterances if u.split == "train"]
    test = [u for u in scan.utterances if u.split != "train"]
    card = write_card(Path(args.root), labels, args.planned_steps, args.epsilon)
    half = set(labels[: len(labels) // 2])
    by_label = [[u for u in train if u.label in half], [u for u in train if u.label not in half]]
    speakers = sorted({u.speaker for u in train})
    sp_half = set(speakers[: len(speakers) // 2])
    by_speaker = [
        [u for u in train if u.speaker in sp_half],
        [u for u in train if u.speaker not in sp_half],
    ]
    root = Path(args.root)
    result: dict[str, Any] = {
        "card": str(card),
        "train_min_peers": args.min_peers,
        "disjoint_labels": run_pair(
            by_label, test, root / "subsets", labels, card, args.seconds, args.min_peers
        ),
        "all_labels": run_pair(
            by_speaker, test, root / "all", labels, card, args.seconds, args.min_peers
        ),
    }
    sub = [n["accuracy_all_labels"] or 0.0 for n in result["disjoint_labels"]]
    full = [n["accuracy_all_labels"] or 0.0 for n in result["all_labels"]]
    result["gap_points"] = round(100 * (sum(full) / len(full) - min(sub)), 2)
    return result


def arrival(args: argparse.Namespace) -> dict[str, Any]:
    scan = scan_corpus(args.corpus)
    labels = scan.labels
    train = [u for u in scan.utterances if u.split == "train"]
    test = [u for u in scan.utterances if u.split != "train"]
    root = Path(args.root) / "arrival"
    shutil.rmtree(root, ignore_errors=True)  # a fresh node: no clips, ledger or checkpoint
    card = write_card(root, labels, args.planned_steps, args.epsilon)
    first, later = train[0::2], train[1::2]
    homes = prepare_homes(
        [first], test, root, labels=labels, task=card, overrides=_node_overrides(root, 0)
    )
    home = homes[0]
    cluster = Cluster(homes)
    bound = args.epsilon
    trace: list[dict[str, Any]] = []
    worst_seen = 0.0

    def poll(phase: str) -> dict[str, Any]:
        nonlocal worst_seen
        s = cluster.status(0)
        ex = s["privacy"]["example_level"] or {}
        eps = float(ex.get("epsilon") or 0.0)
        worst_seen = max(worst_seen, eps)
        rec = {
            "t": round(time.time() - t0, 1),
            "phase": phase,
            "state": s["data"]["training_state"],
            "clips": s["data"]["clips"],
            "new_since_start": s["data"]["new_since_start"],
            "retired": ex.get("retired_clips"),
            "worst_clip_epsilon": eps,
            "accuracy": _accuracy(s),
        }
        trace.append(rec)
        if eps > bound:
            raise SystemExit(f"a clip's ε {eps} exceeded the bound {bound}: {rec}")
        return rec

    def until(phase: str, done: Any, timeout: float) -> dict[str, Any]:
        deadline = time.time() + timeout
        while True:
            rec = poll(phase)
            if done(rec) or time.time() > deadline:
                return rec
            time.sleep(1.0)

    t0 = time.time()
    try:
        cluster.start(0, bootstrap=[])
        cluster.wait_ready(0)
        end1 = until("half", lambda r: r["state"] == "budget_exhausted", args.timeout)
        acc_half = end1["accuracy"]
        for u in later:  # the owner records the other half while the node runs
            dest = home / "data" / u.label / u.path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(u.path, dest)
        until("copied", lambda r: r["clips"] == len(train) and r["state"] == "training", 60)
        until("learning", lambda r: (r["retired"] or 0) < len(train) and r["t"] > 0, 0)
        time.sleep(args.kill_after)
        before_kill = poll("before kill")
        cluster.kill(0, signal.SIGKILL)
        ledger = load_checkpoint(home / "model.ckpt").ledger
        assert ledger is not None
        eps_ckpt = ledger.epsilon
        cluster.start(0, bootstrap=[])
        cluster.wait_ready(0)
        after = poll("restarted")
        until("after restart", lambda r: r["state"] == "budget_exhausted", args.timeout)
        time.sleep(4)  # one more evaluation of the final model
        final = poll("final")
    finally:
        cluster.stop_all()
    ledger = load_checkpoint(home / "model.ckpt").ledger
    assert ledger is not None
    per_clip = [ledger.epsilon_at(a) for a in ledger.ages.values()]
    return {
        "card": str(card),
        "clips_first_half": len(first),
        "clips_copied_while_running": len(later),
        "accuracy_half_data": acc_half,
        "accuracy_all_data": final["accuracy"],
        # Counted by the process that saw them arrive (a restarted node counts from its start).
        "new_clips_counted_by_status": max(r["new_since_start"] for r in trace),
        "epsilon_before_kill": before_kill["worst_clip_epsilon"],
        "epsilon_in_checkpoint_after_kill": eps_ckpt,
        "epsilon_after_restart": after["worst_clip_epsilon"],
        "worst_clip_epsilon_ever_seen": worst_seen,
        "bound": bound,
        "max_per_clip_epsilon_in_ledger": max(per_clip),
        "clips_over_bound": sum(1 for e in per_clip if e > bound),
        "clips_accounted": len(per_clip),
        "retired_at_end": final["retired"],
        "trace": trace,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("experiment", choices=["subsets", "arrival"])
    parser.add_argument("--corpus", default="data/fsdd")
    parser.add_argument("--root", default="runs/continual_nodes")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--planned-steps", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=120.0, help="subsets: run time")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--kill-after", type=float, default=10.0)
    parser.add_argument(
        "--min-peers", type=int, default=1, help="subsets: gossip.train_min_peers (default 1)"
    )
    args = parser.parse_args()
    out = subsets(args) if args.experiment == "subsets" else arrival(args)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
