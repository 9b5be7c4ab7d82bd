"""Speaker-verification equal error rate of the packaged GE2E encoder on a corpus.

    python scripts/eval_speakers.py data/fsdd --split test       # held-out speakers only
    python scripts/eval_speakers.py data/ravdess --calibrate      # the threshold the node uses

Every clip (at most ``--per-speaker`` per speaker, drawn with ``--seed``) is embedded. Two trial
sets: clip against clip (every pair), and enrolment against clip (each speaker enrolled with
``--enroll`` random clips, tested against every other clip of every speaker). Prints JSON: EER,
the threshold at the EER, and the false-accept / false-reject rates at the packaged threshold.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from flava_p2p.speech.audio import read_audio
from flava_p2p.speech.dataset import scan_corpus
from flava_p2p.speech.speaker import DEFAULT_THRESHOLD, SpeakerEncoder, centroid, equal_error_rate


def _rates(scores: np.ndarray, same: np.ndarray, threshold: float) -> dict[str, float]:
    accept = scores >= threshold
    return {
        "false_accept": round(float(accept[~same].mean()), 4),
        "false_reject": round(float((~accept[same]).mean()), 4),
    }


def main() -> None:
    """Embed, score, print JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("corpus", type=Path, help="a corpus in the Speech Commands layout")
    ap.add_argument(
        "--split",
        choices=["all", "test", "train"],
        default="all",
        help="which speakers: the corpus's held-out test speakers, the others, all",
    )
    ap.add_argument("--per-speaker", type=int, default=60)
    ap.add_argument("--enroll", type=int, default=5, help="clips per enrolment")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--calibrate",
        action="store_true",
        help="report the EER threshold as the one to pin in flava_p2p/speech/speaker.py",
    )
    args = ap.parse_args()  # fmt: skip

    rng = np.random.default_rng(args.seed)
    scan = scan_corpus(args.corpus, allow_empty=True)
    by_speaker: dict[str, list[Path]] = defaultdict(list)
    for u in scan.utterances:
        if args.split == "all" or (u.split == "test") == (args.split == "test"):
            by_speaker[u.speaker].append(u.path)
    enc = SpeakerEncoder(threads=2)
    start = time.perf_counter()
    embeds, owners = [], []
    for speaker, paths in sorted(by_speaker.items()):
        pick = rng.permutation(len(paths))[: args.per_speaker]
        for i in sorted(pick):
            wave, rate = read_audio(paths[i])
            embeds.append(enc.embed(wave, rate))
            owners.append(speaker)
    e, who = np.stack(embeds), np.array(owners)
    seconds = time.perf_counter() - start

    sim = e @ e.T
    iu = np.triu_indices(len(e), 1)
    pair_scores, pair_same = sim[iu], (who[:, None] == who[None, :])[iu]
    eer, thr = equal_error_rate(pair_scores, pair_same)

    enr_scores, enr_same = [], []
    for speaker in sorted(set(owners)):
        idx = np.flatnonzero(who == speaker)
        chosen = rng.choice(idx, size=min(args.enroll, len(idx) - 1), replace=False)
        model = centroid(e[chosen])
        rest = np.setdiff1d(np.arange(len(e)), chosen)
        enr_scores.append(e[rest] @ model)
        enr_same.append(who[rest] == speaker)
    es, esame = np.concatenate(enr_scores), np.concatenate(enr_same)
    enr_eer, enr_thr = equal_error_rate(es, esame)

    at = f"at_{DEFAULT_THRESHOLD}"
    out = {
        "corpus": str(args.corpus),
        "split": args.split,
        "speakers": len(set(owners)),
        "clips": len(e),
        "embed_ms_per_clip": round(1000 * seconds / len(e), 1),
        "clip_vs_clip": {
            "eer": round(eer, 4),
            "eer_threshold": round(thr, 4),
            "trials": len(pair_scores),
            at: _rates(pair_scores, pair_same, DEFAULT_THRESHOLD),
        },
        f"enrol_{args.enroll}_vs_clip": {
            "eer": round(enr_eer, 4),
            "eer_threshold": round(enr_thr, 4),
            "trials": len(es),
            at: _rates(es, esame, DEFAULT_THRESHOLD),
        },
    }
    if args.calibrate:
        out["calibrated_threshold"] = round(enr_thr, 4)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
