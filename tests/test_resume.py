"""Complete resume state: a node killed with SIGKILL at random moments, 20 times, screens the
replayed input exactly as a node that was never interrupted.

The child process is a real NodeCore with the real screens and scores, persisted after every
merge through the runtime's own ``capture`` → ``NodeState.save`` (atomic) and resumed through
``NodeState.load`` → ``resume_record`` → ``resume_core``, as ``flava-node run`` does. Its input
is a fixed, seeded sequence of rounds: its own training update, two honest peers, a sign
flipper, an ALIE-style one-sided model and an outlier that alternates between honest and
hostile (so the scores and graylist matter).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CHILD = r"""
import hashlib, json, random, sys
from pathlib import Path
import numpy as np
from flava_p2p.config import GossipConfig
from flava_p2p.identity import Identity
from flava_p2p.node.assembly import resume_core
from flava_p2p.protocol.node import DpInfo, NodeCore, _Received
from flava_p2p.runtime.state import NodeState, capture, resume_record

DIM, ROUNDS = 256, 40
path = Path(sys.argv[1])
gossip = GossipConfig(period_s=1.0, aggregation="clipped", opposed_cosine=-0.2,
                      max_one_sided=0.65, max_norm_ratio=3.0)
core = NodeCore(Identity.from_seed(b"r" * 32), network_id="t",
                genesis=np.zeros(DIM, np.float32), schema=b"s" * 32, gossip=gossip,
                rng=random.Random(1))
core.start(0.0)
state = NodeState.load(path)
if state.model is not None:
    resume_core(core, resume_record(state, np.zeros(DIM, np.float32)))
peers = [b"honest1", b"honest2", b"flipper", b"alie", b"sometimes"]
for r in range(state.round, ROUNDS):
    rng = np.random.default_rng(r)
    now = 1.0 * (r + 1)
    direction = np.random.default_rng(99).normal(size=DIM).astype(np.float32)
    step = (0.1 * direction + 0.05 * rng.normal(size=DIM)).astype(np.float32)
    core.local_update(core.model + step, 100, DpInfo(None, None), now)
    honest = [core.model + 0.05 * rng.normal(size=DIM).astype(np.float32) for _ in range(2)]
    mu = np.mean(honest, axis=0)
    hostile = r % 3 != 0
    models = {
        b"honest1": honest[0], b"honest2": honest[1], b"flipper": -core.model,
        b"alie": mu - 3.0 * np.abs(mu - core.model) - 0.2,
        b"sometimes": core.model + (20.0 if hostile else 0.05) * rng.normal(size=DIM),
    }
    core._inbox = {p: _Received(np.asarray(m, np.float32), 100, core.round)
                   for p, m in models.items() if not core.scores.is_graylisted(p, now)}
    core._now = now
    core.timer(max(core._next_gossip, now))
    print(json.dumps({
        "round": r,
        "merged": sorted(p.decode() for p in core.last_inputs),
        "graylisted": sorted(p.decode() for p in core.scores.graylisted(now)),
        "scores": [round(core.scores.score(p, now), 9) for p in peers],
        "model": hashlib.sha256(core.model.tobytes()).hexdigest()[:16],
    }), flush=True)
    capture(state, core)  # printed first: a kill before this line makes the restart redo it
    state.save(path)
"""


def _run_to_end(script: Path, state: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, str(script), str(state)], capture_output=True, text=True, check=True
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.mark.slow  # 21 child processes, ~1 min
def test_twenty_kill_9_restarts_screen_exactly_as_one_run(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    reference = _run_to_end(script, tmp_path / "ref.msgpack")
    assert len(reference) == 40
    # The input really exercises the screens: refusals, a graylisting, changing scores.
    assert any("flipper" not in d["merged"] for d in reference)
    assert any(d["graylisted"] for d in reference)

    state = tmp_path / "killed.msgpack"
    seen: dict[int, dict[str, Any]] = {}
    rng = np.random.default_rng(0)
    kills = redone = 0
    while kills < 20:
        with subprocess.Popen(
            [sys.executable, str(script), str(state)], stdout=subprocess.PIPE, text=True
        ) as proc:
            assert proc.stdout is not None
            wanted = int(rng.integers(0, 3))  # 0: killed while starting up
            lines = [proc.stdout.readline() for _ in range(wanted)]
            os.kill(proc.pid, signal.SIGKILL)
            lines += proc.stdout.read().splitlines()
        kills += 1
        for line in filter(None, (x.strip() for x in lines)):
            d = json.loads(line)
            if d["round"] in seen:  # killed after deciding, before saving: decided again
                redone += 1
            assert seen.setdefault(d["round"], d) == d, "a round decided twice, differently"
    for d in _run_to_end(script, state):
        seen.setdefault(d["round"], d)
    assert kills == 20
    assert sorted(seen) == list(range(40))
    for r, d in seen.items():
        assert d == reference[r], f"round {r} screened differently after restarts"
    print(f"{kills} kills, {redone} rounds decided again after a kill")
