#!/usr/bin/env python3
"""The device feedback loop end to end, over real HTTP to real training, gossiping nodes.

    .venv/bin/python scripts/feedback_loop.py --corpus data/fsdd

1. ``--nodes`` real ``flava-node`` processes learn the corpus's training speakers together
   (speaker-partitioned, DP at ``--epsilon`` per example, as scripts/local_cluster.py) for
   ``--warmup`` seconds. Node 0 is the user's device.
2. Of the held-out speakers, the one node 0's shared model handles worst becomes the user;
   the others are "other speakers".
3. Before: node 0 recognises every clip of the user and of the other speakers.
4. The user sends ``--feedback`` of their clips to ``POST /v1/recognize`` and answers each
   with the true label via ``POST /v1/feedback`` (confirming the right answers, correcting the
   mistakes). Confirmed clips go to node 0's inbox: continuous learning trains on them (DP,
   their own per-clip ε), and personalization fits the private correction.
5. After ``--learn`` more seconds: the user's other clips (personalised, and the shared model
   alone via ``?personal=0``) and the other speakers (shared model).

Prints JSON with every accuracy, node 0's ε and round, and the personal fit.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from flava_p2p.speech.dataset import Utterance, scan_corpus
from flava_p2p.testing.cluster import Cluster, prepare


def _post(url: str, body: bytes, content_type: str = "audio/wav") -> dict[str, Any]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})  # noqa: S310 (loopback)
    with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310
        out: dict[str, Any] = json.loads(resp.read())
    return out


def _accuracy(base: str, clips: list[Utterance], personal: bool) -> float:
    """Share of ``clips`` node 0 recognises correctly (4 concurrent clients)."""
    url = f"{base}/v1/recognize" + ("" if personal else "?personal=0")

    def one(u: Utterance) -> bool:
        return bool(_post(url, u.path.read_bytes())["label"] == u.label)

    with ThreadPoolExecutor(4) as pool:
        right = list(pool.map(one, clips))
    return round(sum(right) / len(right), 4)


def main() -> int:
    """Run the loop; print JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", default="data/fsdd")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--epsilon", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=120.0, help="seconds of learning before")
    p.add_argument("--learn", type=float, default=90.0, help="seconds of learning after feedback")
    p.add_argument("--feedback", type=int, default=50, help="the user's clips with feedback")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    scan = scan_corpus(Path(args.corpus))
    held: dict[str, list[Utterance]] = {}
    for u in scan.utterances:
        if u.split != "train":
            held.setdefault(u.speaker, []).append(u)
    if len(held) < 2:
        raise SystemExit("the corpus needs at least two held-out speakers (a user and others)")
    root = Path(tempfile.mkdtemp(prefix="flava-feedback-"))
    homes = prepare(
        Path(args.corpus),
        root,
        args.nodes,
        seed=args.seed,
        overrides={"gossip": {"period_s": 5.0}, "privacy": {"target_epsilon": args.epsilon}},
    )
    cluster = Cluster(homes)
    out: dict[str, Any] = {"corpus": args.corpus, "nodes": args.nodes, "epsilon": args.epsilon}
    try:
        cluster.start_all()
        base = json.loads((homes[0] / "status.json").read_text())["api"]
        time.sleep(args.warmup)
        before = {s: _accuracy(base, clips, personal=False) for s, clips in sorted(held.items())}
        user = min(before, key=lambda s: before[s])
        others = [s for s in held if s != user]
        clips = held[user][:]
        random.Random(args.seed).shuffle(clips)
        given, rest = clips[: args.feedback], clips[args.feedback :]
        other_clips = [u for s in others for u in held[s]]
        before_user = _accuracy(base, rest, personal=False)
        before_others = _accuracy(base, other_clips, personal=False)
        round_before = cluster.status(0)["round"]
        corrected = 0
        for u in given:
            rec = _post(f"{base}/v1/recognize", u.path.read_bytes())
            corrected += rec["label"] != u.label
            answer = json.dumps({"clip_id": rec["clip_id"], "label": u.label}).encode()
            _post(f"{base}/v1/feedback", answer, "application/json")
        round_at_feedback = cluster.status(0)["round"]
        time.sleep(args.learn)
        fit = _post(f"{base}/v1/personal/refit", b"", "application/json")
        status = cluster.status(0)
        out |= {
            "user": user,
            "others": others,
            "user_clips": {"feedback": len(given), "evaluated": len(rest)},
            "mistakes_corrected": corrected,
            "before": {
                "per_speaker_shared": before,
                "user_shared": before_user,
                "others_shared": before_others,
                "round": round_before,
            },
            "after": {
                "user_personal": _accuracy(base, rest, personal=True),
                "user_shared": _accuracy(base, rest, personal=False),
                "others_shared": _accuracy(base, other_clips, personal=False),
            },
            "personal": fit,
            "node0": {
                "round_at_feedback": round_at_feedback,
                "round": status["round"],
                "epsilon": status["privacy"]["example_level"]["epsilon"],
                "clips": status.get("data", {}).get("clips"),
            },
        }
    finally:
        cluster.stop_all()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
