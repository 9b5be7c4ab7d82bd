"""Worker processes for the ``real`` learners: node i's trainer lives in worker i mod W.

Each worker builds the trainers of its nodes once (ledger, optimizer state and noise generator
stay put for the node's life) and trains the bursts it is sent; results do not depend on the
number of workers, since each trainer only ever sees its own inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from flava_p2p.errors import FlavaError
from flava_p2p.sim.scenario import Scenario
from flava_p2p.wire.messages import DpInfo

Vec = npt.NDArray[np.float32]


class WorkerPool:
    """W spawned processes, each owning the trainers of nodes i ≡ w (mod W)."""

    def __init__(self, sc: Scenario, seed: int, n_nodes: int, workers: int) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
        self.workers = workers
        self.conns = []
        self.procs = []
        payload = sc.model_dump_json()
        for w in range(workers):
            parent, child = ctx.Pipe()
            own = list(range(w, n_nodes, workers))
            proc = ctx.Process(target=_worker_main, args=(child, payload, seed, own), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            msg = conn.recv()
            if isinstance(msg, BaseException):
                raise FlavaError(f"simulator training worker failed to start: {msg}")

    def run(
        self, jobs: list[tuple[int, Vec]], now: float = 0.0
    ) -> tuple[dict[int, tuple[Vec, int, DpInfo]], dict[int, int]]:
        """Scatter jobs to their owners, gather every result (and each node's retired-clip
        count)."""
        per: list[list[tuple[int, Vec]]] = [[] for _ in range(self.workers)]
        for i, model in jobs:
            per[i % self.workers].append((i, model))
        for conn, batch in zip(self.conns, per, strict=True):
            if batch:
                conn.send(("train", (batch, now)))
        out: dict[int, tuple[Vec, int, DpInfo]] = {}
        retired: dict[int, int] = {}
        for conn, batch in zip(self.conns, per, strict=True):
            if batch:
                res = conn.recv()
                if isinstance(res, BaseException):
                    raise FlavaError(f"simulator training worker failed: {res}")
                for i, vec, n, eps, delta, gone in res:
                    out[i] = (vec, n, DpInfo(eps, delta))
                    retired[i] = gone
        return out, retired

    def evaluate(self, models: dict[int, Vec]) -> dict[int, float]:
        """Split the models over the workers; each evaluates its share."""
        keys = sorted(models)
        shares = [keys[w :: self.workers] for w in range(self.workers)]
        for conn, share in zip(self.conns, shares, strict=True):
            conn.send(("eval", {k: models[k] for k in share}))
        out: dict[int, float] = {}
        for conn in self.conns:
            res = conn.recv()
            if isinstance(res, BaseException):
                raise FlavaError(f"simulator evaluation worker failed: {res}")
            out.update(res)
        return dict(sorted(out.items()))

    def close(self) -> None:
        for conn in self.conns:
            conn.send(None)
        for proc in self.procs:
            proc.join(timeout=10)


def _worker_main(conn: Any, payload: str, seed: int, own: list[int]) -> None:
    """Worker process: build the owned trainers, then train batches until told to stop."""
    try:
        sc = Scenario.model_validate_json(payload)
        sc = sc.model_copy(update={"learner": sc.learner.model_copy(update={"threads": 1})})
        from flava_p2p.sim.real_learners import RealLearners

        learners = RealLearners(sc, seed, own=own)
        conn.send("ready")
    except Exception as exc:  # reported to the parent, which raises a clear error
        conn.send(exc)
        return
    while (msg := conn.recv()) is not None:
        kind, body = msg
        try:
            if kind == "eval":
                conn.send(learners.evaluate(body))
                continue
            jobs, now = body
            res = learners.train_many(jobs, now)
            conn.send(
                [
                    (i, v, n, dp.example_epsilon, dp.example_delta, learners.retired.get(i, 0))
                    for i, (v, n, dp) in res.items()
                ]
            )
        except Exception as exc:
            conn.send(exc)
