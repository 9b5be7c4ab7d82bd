"""A simulation spread over several processes — Ray actors on one or many machines — that gives
the same metrics, byte for byte, as the one-process run of the same scenario and seed.

Each :class:`Partition` runs a :class:`~flava_p2p.sim.runner.Simulation` that owns a contiguous
block of nodes (it builds, trains and times only those). Datagrams to another block leave
through the virtual network's ``remote`` list. The driver advances every partition through
conservative time windows (Chandy–Misra style, synchronous): no datagram arrives sooner than
``network.min_latency_s`` after it is sent, so anything sent inside a window of that length
lands after the window ends, and exchanging the cross-partition datagrams between windows
loses nothing. Windows skip ahead over stretches where no partition has anything to do.

Why the result does not depend on the split: every link draws from its sender's RNG, events are
ordered by keys any partition computes alike (sim/virtual_network.py), every node's training
draws from its own streams, and measurements are merged per node (``combine_measures``).

Backends: ``ray`` (actors, one CPU each; ``address`` joins an existing cluster),
``processes`` (the first block in this process, the others in spawned child processes on this
machine, talking over pipes in msgpack frames: a window costs a pipe round trip, ~0.1 ms, where
a Ray actor call costs milliseconds) and
``inline`` (the partitions in this process, one after another: for tests and debugging).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from flava_p2p.errors import FlavaError
from flava_p2p.runtime.logs import LogFormat, LogLevel, configure_logging, logging_settings
from flava_p2p.sim import collector
from flava_p2p.sim.partition_codec import decode, encode
from flava_p2p.sim.runner import RunLoop, Simulation, combine_measures
from flava_p2p.sim.scenario import Scenario
from flava_p2p.sim.virtual_network import RemoteDatagram

Backend = Literal["ray", "processes", "inline"]
BOOTSTRAP_LOAD = 0.66
"""The bootstrap node's extra work in a ``discovered`` topology, in ordinary nodes per node
and round: every node says HELLO to it first and it sits in every view until shuffles spread
the others. Measured on protocol_10k (3 rounds, 2 workers): node 0 alone cost as much as
~2,200 other nodes, and with this weight both workers were busy 20.5 and 21.0 s."""
Step = tuple[list[RemoteDatagram], float]
"""What a partition returns after a window: datagrams for other partitions, and when its next
own event is (inf: none)."""


class Partition:
    """One process's share of a partitioned run (a Ray actor, or an object in process)."""

    def __init__(
        self, scenario: dict[str, Any], seed: int, owned: list[int], *, own_process: bool = False
    ) -> None:
        if cache := scenario.pop("_cache_env", None):
            os.environ["FLAVA_CACHE_DIR"] = cache
        self.sim = Simulation(Scenario.model_validate(scenario), seed, owned=set(owned))
        self.own_process = own_process
        """Whether this partition has its process to itself (a child process or a Ray actor):
        then it pauses the process's garbage collector as a one-process run does
        (sim/collector.py), and trains on one torch thread; in the driver's process, the
        driver's run loop does both."""
        if own_process and (torch := sys.modules.get("torch")) is not None:
            # Building the learners set learner.threads (2 by default); a partition has one
            # core. Two children on two threads each ran a 2,000-node DP run 1.4x slower.
            torch.set_num_threads(1)
        self._collections = collector.Between()

    def start(self) -> Step:
        """Start the owned nodes (their first datagrams)."""
        if self.own_process:
            collector.pause()
        self.sim.net.start()
        return self._step()

    def advance(self, t_end: float, inbound: list[RemoteDatagram]) -> Step:
        """Queue datagrams from other partitions, then simulate up to ``t_end``."""
        self.sim.net.deliver_remote(inbound)
        self.sim.net.run_until(t_end)
        return self._step()

    def _step(self) -> Step:
        out, self.sim.net.remote = self.sim.net.remote, []
        return out, self.sim.net.next_event_time()

    def torch_threads(self) -> int:
        """Intra-op threads torch trains on in this partition's process (0: torch not loaded,
        as in a run without learning)."""
        torch = sys.modules.get("torch")
        return int(torch.get_num_threads()) if torch is not None else 0

    def measure_part(self) -> dict[str, Any]:
        """This partition's share of a metrics record."""
        if self.own_process:
            self._collections.at_measurement()
        return self.sim.measure_part()

    def costs(self) -> tuple[dict[int, int], Counter[str], Counter[str]]:
        """Clips per owned node, fault and attack datagrams sent."""
        sizes, faults, attacks = self.sim._costs()
        owned = self.sim.owned or set()
        return {i: n for i, n in enumerate(sizes) if i in owned}, faults, attacks

    def close(self) -> None:
        """Stop the learners (worker processes, if any)."""
        self.sim.learners.close()


class PartitionedRun(RunLoop):
    """The :class:`RunLoop` of a scenario split over ``workers`` partitions."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int | None = None,
        *,
        workers: int = 2,
        backend: Backend = "ray",
        address: str | None = None,
    ) -> None:
        self._created = time.perf_counter()
        self.seed = scenario.seed if seed is None else seed
        self.sc = scenario.model_copy(update={"seed": self.seed})
        sc = self.sc
        self.window = sc.network.min_latency_s
        if self.window <= 0:
            raise FlavaError(
                "a partitioned run needs network.min_latency_s > 0 (the shortest time a "
                "datagram can take; partitions advance in windows of that length). Add e.g. "
                "`network: {min_latency_s: 0.01}` to the scenario or --set "
                "network.min_latency_s=0.01."
            )
        if not 1 <= workers <= sc.nodes:
            raise FlavaError(f"--workers must be between 1 and the node count ({sc.nodes}).")
        if sc.faults.count:
            raise FlavaError(
                "faults.count > 0 needs the whole network in one process (rogue hosts pick "
                "targets among all nodes): run it with --engine local."
            )
        self.byzantine = set(sc.byzantine_nodes())
        self.honest = [i for i in range(sc.nodes) if i not in self.byzantine]
        self.period = sc.gossip.period_s
        self.horizon = sc.rounds * self.period
        self.blocks = balanced_blocks(node_weights(sc), workers)
        self.owner = {i: k for k, block in enumerate(self.blocks) for i in block}
        self.backend = backend
        self.windows = 0
        self._final_costs: tuple[list[int], Counter[str], Counter[str]] | None = None
        payload = _portable(sc)
        if backend == "ray":
            ray = _ray()
            if not ray.is_initialized():
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            actor = ray.remote(num_cpus=1)(Partition)
            self._parts: list[Any] = [
                actor.remote(dict(payload), self.seed, block, own_process=True)
                for block in self.blocks
            ]
        elif backend == "processes":
            # The first block runs here, the others in child processes: W processes for W
            # blocks instead of W + 1, and the first block's datagrams never cross a pipe.
            # Children are spawned first so that they build their nodes while this process
            # builds its own. Like a child, this process then trains on one torch thread
            # (a process-wide setting: a run on W processes is meant to own the machine).
            children = [
                _ProcessPartition(dict(payload), self.seed, block) for block in self.blocks[1:]
            ]
            self._parts = [Partition(dict(payload), self.seed, self.blocks[0]), *children]
            if (torch := sys.modules.get("torch")) is not None:
                torch.set_num_threads(1)  # one partition per core, as in the children
        else:
            self._parts = [Partition(dict(payload), self.seed, block) for block in self.blocks]
        self._inbox: list[list[RemoteDatagram]] = [[] for _ in self.blocks]
        self._next: list[float] = [0.0 for _ in self.blocks]
        self.now = 0.0
        self.torch_threads: list[int] = self._call("torch_threads")
        """Per partition, the torch threads it trains on. Asked here, not when the run
        starts: the answer waits until every partition is built, and a child building more
        nodes than this process took ~4 s longer on protocol_10k, which the run's clock
        (``RunLoop.run``) counted as simulation time. One process does not count its build."""

    def add_engine(self, summary: dict[str, Any], out_dir: str | Path | None) -> dict[str, Any]:
        """The summary with the engine's figures (also written to ``out_dir``'s summary)."""
        summary["engine"] = {
            "kind": self.backend,
            "workers": len(self.blocks),
            "windows": self.windows,
            "window_s": self.window,
            "torch_threads": self.torch_threads,
            "wall_seconds_with_setup": round(time.perf_counter() - self._created, 3),
        }
        if out_dir is not None:
            path = Path(out_dir) / "summary.json"
            path.write_text(json.dumps(summary, indent=1) + "\n", "utf-8")
        return summary

    # ------------------------------------------------------------------ calls
    def _call(self, method: str, args: list[tuple[Any, ...]] | None = None) -> list[Any]:
        """``method`` on every partition (in parallel on Ray), results in partition order."""
        calls = args or [() for _ in self._parts]
        if self.backend == "ray":
            ray = _ray()
            return list(
                ray.get(
                    [getattr(p, method).remote(*a) for p, a in zip(self._parts, calls, strict=True)]
                )
            )
        if self.backend == "processes":
            here, *children = self._parts
            for p, a in zip(children, calls[1:], strict=True):
                p.send(method, a)  # all workers start before any answer is awaited
            first = getattr(here, method)(*calls[0])
            return [first, *(p.receive() for p in children)]
        return [getattr(p, method)(*a) for p, a in zip(self._parts, calls, strict=True)]

    def _absorb(self, steps: list[Step]) -> None:
        for k, (out, nxt) in enumerate(steps):
            self._next[k] = nxt
            for d in out:
                self._inbox[self.owner[d[1]]].append(d)

    # ------------------------------------------------------------------ RunLoop
    def _start(self) -> None:
        self._absorb(self._call("start"))

    def _advance(self, t: float) -> None:
        """Windows of ``min_latency_s`` up to ``t``, skipping stretches with no events."""
        while self.now < t:
            pending = min((d[0] for box in self._inbox for d in box), default=float("inf"))
            first = min(*self._next, pending)
            end = min(t, max(self.now, first) + self.window)
            inbound, self._inbox = self._inbox, [[] for _ in self.blocks]
            self._absorb(self._call("advance", [(end, box) for box in inbound]))
            self.now = end
            self.windows += 1

    def measure(self) -> dict[str, Any]:
        return combine_measures(self.sc, self.byzantine, self._call("measure_part"))

    def _close(self) -> None:
        self._call("close")
        if self.backend == "processes":  # the summary's costs come after closing: ask first
            self._final_costs = self._costs()
            for p in self._parts[1:]:
                p.stop()

    def _costs(self) -> tuple[list[int], Counter[str], Counter[str]]:
        if self._final_costs is not None:
            return self._final_costs
        sizes: dict[int, int] = {}
        faults: Counter[str] = Counter()
        attacks: Counter[str] = Counter()
        for s, f, a in self._call("costs"):
            sizes.update(s)
            faults.update(f)
            attacks.update(a)
        return [sizes[i] for i in sorted(sizes)], faults, attacks


class _ProcessPartition:
    """A :class:`Partition` in a spawned child process; calls and answers are msgpack frames
    (:mod:`~flava_p2p.sim.partition_codec`) over a pipe, never pickle: they carry datagrams
    that simulated peers composed."""

    def __init__(self, scenario: dict[str, Any], seed: int, owned: list[int]) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve_partition,
            args=(child, json.dumps(scenario), seed, owned, logging_settings()),
            daemon=True,
            name=f"flava-partition-{owned[0]}-{owned[-1]}",
        )
        self._proc.start()
        child.close()

    def send(self, method: str, args: tuple[Any, ...]) -> None:
        """Ask the worker to run ``method(*args)``."""
        self._conn.send_bytes(encode([method, list(args)]))

    def receive(self) -> Any:
        """The answer to the last :meth:`send`; the worker's error as a FlavaError."""
        try:
            ok, value = decode(self._conn.recv_bytes())
        except EOFError:
            raise FlavaError(
                f"simulation worker {self._proc.name} exited (code {self._proc.exitcode}); "
                "its error, if any, is on stderr above"
            ) from None
        if not ok:
            raise FlavaError(f"simulation worker {self._proc.name} failed: {value}")
        return value

    def stop(self) -> None:
        """End the worker (it exits when its pipe closes)."""
        self._conn.close()
        self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.kill()


def _serve_partition(
    conn: Any, scenario: str, seed: int, owned: list[int], logs: tuple[LogFormat, LogLevel]
) -> None:
    """A worker process's loop: build the partition, then answer calls until the pipe closes."""
    import torch

    # The parent's stdout may be machine-readable (--json): anything a worker prints goes to
    # stderr, and its log lines look like the parent's.
    os.dup2(2, 1)
    configure_logging(*logs)

    torch.set_num_threads(1)  # one worker per core: intra-op threads would fight each other
    try:
        part: Partition | None = Partition(json.loads(scenario), seed, owned, own_process=True)
    except Exception as exc:  # reported at the first call
        part, failure = None, f"{type(exc).__name__}: {exc}"
    while True:
        try:
            method, args = decode(conn.recv_bytes())
        except EOFError:
            return
        if part is None:
            conn.send_bytes(encode([False, f"could not build the partition: {failure}"]))
            continue
        try:
            result = getattr(part, method)(*args)
        except Exception as exc:  # the driver raises it as a FlavaError
            conn.send_bytes(encode([False, f"{method}: {type(exc).__name__}: {exc}"]))
            continue
        conn.send_bytes(encode([True, result]))


def _portable(sc: Scenario) -> dict[str, Any]:
    """The scenario as plain data with absolute paths (workers may start elsewhere), and the
    feature cache location this process uses."""
    data = sc.model_dump(mode="json")
    for section, key in (("data", "corpus"), ("data", "eval_corpus"), ("data", "cache_dir")):
        value = data[section].get(key)
        if value:
            data[section][key] = str(Path(value).absolute())
    churn = data["network"]["churn"]
    if churn.get("trace"):
        churn["trace"] = str(Path(churn["trace"]).absolute())
    if cache := os.environ.get("FLAVA_CACHE_DIR"):
        data["_cache_env"] = cache
    return data


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise FlavaError(
            "--engine ray needs Ray: pip install 'flava-p2p[ray]' (or pip install ray)."
        ) from None
    return ray


def run_partitioned(
    scenario: Scenario,
    out_dir: str | Path | None = None,
    seed: int | None = None,
    *,
    workers: int = 2,
    backend: Backend = "ray",
    address: str | None = None,
) -> dict[str, Any]:
    """Build and run one partitioned simulation; the summary adds the engine's figures."""
    run = PartitionedRun(scenario, seed, workers=workers, backend=backend, address=address)
    return run.add_engine(run.run(out_dir), out_dir)


def node_weights(sc: Scenario) -> list[float]:
    """The expected work of each node, for splitting them evenly: 1 each, plus the bootstrap
    node's extra load in a ``discovered`` topology (it fades as views fill, hence ÷ rounds)."""
    weights = [1.0] * sc.nodes
    if sc.topology.kind == "discovered":
        weights[0] += BOOTSTRAP_LOAD * sc.nodes / max(sc.rounds, 1)
    return weights


def balanced_blocks(weights: list[float], workers: int) -> list[list[int]]:
    """``workers`` contiguous, non-empty blocks of node indices with about equal total
    weight (a partition that finishes its window early waits for the slowest).

    Each block aims at an equal share of the weight *still left*, not at a fixed fraction of
    the total: after a node heavier than a share (the bootstrap at many workers) fills a block
    alone, the rest is split evenly over the remaining blocks instead of leaving the next
    block nearly empty."""
    n = len(weights)
    total = sum(weights)
    blocks: list[list[int]] = []
    start, acc = 0, 0.0
    for k in range(workers - 1):
        target = acc + (total - acc) / (workers - k)
        end = start + 1  # at least one node
        acc += weights[start]
        # leave at least one node for each block still to come
        while end < n - (workers - 1 - k) and acc + weights[end] / 2 <= target:
            acc += weights[end]
            end += 1
        blocks.append(list(range(start, end)))
        start = end
    blocks.append(list(range(start, n)))
    return blocks
