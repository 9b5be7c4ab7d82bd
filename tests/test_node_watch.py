"""A real `flava-node run` process under a task card learns clips dropped into its folders.

Real process, real UDP socket, real DP-SGD and real espeak-ng audio: the node starts with some
labels' clips; while it runs, a new label's clips land in its inbox, a corrupt WAV and a folder
that is no label of the card land in --data. Without a restart the node trains on the new
clips (status counts them), reports the corrupt file with its reason and the foreign folder,
and its worst clip ε stays within the card's bound.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml

from flava_p2p.speech.dataset import scan_corpus
from flava_p2p.testing.cluster import Cluster, prepare_homes


@pytest.mark.slow  # a real node process for ~1 min: `scripts/test.sh --slow`
def test_running_node_picks_up_new_clips_and_counts_bad_ones(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    scan = scan_corpus(tiny_corpus)
    labels = scan.labels
    card = tmp_path / "task.yaml"
    card.write_text(
        yaml.safe_dump(
            {
                "name": "watch",
                "labels": labels,
                "privacy": {"target_epsilon": 8.0, "planned_steps": 60},
            }
        )
    )
    train = [u for u in scan.utterances if u.split == "train"]
    first = [u for u in train if u.label != labels[0]]
    later = [u for u in train if u.label == labels[0]]
    home = prepare_homes(
        [first],
        [u for u in scan.utterances if u.split != "train"],
        tmp_path / "nodes",
        labels=labels,
        task=card,
        overrides={
            "data": {"root": "data", "cache_dir": None, "watch_period_s": 1.0},
            "training": {"batch_size": 8, "lr": 0.5, "local_steps": 2, "threads": 1},
        },
    )[0]
    cluster = Cluster([home])
    try:
        cluster.start(0, bootstrap=[])
        s = cluster.wait_ready(0)
        assert s["task"].startswith("watch (sha256 ")
        assert s["data"]["clips_per_label"][labels[0]] == 0
        n0 = s["data"]["clips"]
        inbox = home / "inbox" / labels[0]
        inbox.mkdir(parents=True)
        for u in later:
            shutil.copy(u.path, inbox / u.path.name)
        (home / "data" / labels[1] / "broken_nohash_0.wav").write_bytes(b"RIFF\0\0\0\0WAVEjunk")
        (home / "data" / "not_a_label").mkdir()
        shutil.copy(later[0].path, home / "data" / "not_a_label" / later[0].path.name)
        deadline = time.time() + 60
        while time.time() < deadline:
            s = cluster.status(0)
            if s["data"]["new_since_start"] == len(later) and s["data"]["rejected_files"] == 1:
                break
            time.sleep(0.5)
        data = s["data"]
        assert data["clips"] == n0 + len(later)
        assert data["clips_per_label"][labels[0]] == len(later)
        assert data["new_since_start"] == len(later)
        assert data["rejected_files"] == 1
        assert "broken_nohash_0.wav" in next(iter(data["rejected_examples"]))
        assert data["unknown_label_folders"] == {"not_a_label": 1}
        steps_before = s["privacy"]["example_level"]["steps"]
        deadline = time.time() + 60
        while time.time() < deadline and s["privacy"]["example_level"]["steps"] <= steps_before:
            time.sleep(0.5)
            s = cluster.status(0)
        ex = s["privacy"]["example_level"]
        assert ex["steps"] > steps_before  # it trains on, no restart
        assert ex["clips_accounted"] == n0 + len(later)
        assert 0 < ex["epsilon"] <= 8.0
        assert cluster.procs[0].poll() is None  # still the same process
    finally:
        cluster.stop_all()
