"""One simulation run: N real :class:`NodeCore` instances, a network model, learners, faults and
measurements, all on one virtual clock.

Outputs in the run directory: ``metrics.jsonl`` (one line per measurement, virtual time only, so
the same seed gives a byte-identical file), ``summary.json`` (also wall time), ``scenario.yaml``
(the resolved scenario, for reproduction) and ``accuracy.png``.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
import yaml
from nacl.public import PrivateKey

from flava_p2p.attacks import parse_attack
from flava_p2p.attacks.network import NetworkAttacker
from flava_p2p.config import NetworkConfig, NodeConfig
from flava_p2p.errors import FlavaError
from flava_p2p.identity import Identity, make_multiaddr
from flava_p2p.node.assembly import (
    CoreSpec,
    ModelIdentity,
    Resume,
    assemble_core,
    attach_attack,
    core_spec,
    snapshot,
)
from flava_p2p.protocol.identity_work import mint_work
from flava_p2p.protocol.node import Event, NodeCore
from flava_p2p.sim import collector
from flava_p2p.sim.fast_wire import UnsealedEndpoint
from flava_p2p.sim.faults import FLOOD_BURST, RogueHost, forged_ping, garbage
from flava_p2p.sim.learners import Learners, make_learners
from flava_p2p.sim.network_conditions import SimLinks, churn_schedule
from flava_p2p.sim.scenario import Scenario
from flava_p2p.sim.topology import STATIC, build_graph, neighbours
from flava_p2p.sim.virtual_network import VirtualNetwork
from flava_p2p.wire.endpoint import WireEndpoint
from flava_p2p.wire.messages import DpInfo, PeerDescriptor

log = structlog.get_logger(__name__)
Vec = npt.NDArray[np.float32]
NETWORK_ID = "flava-sim"
Progress = Callable[[float, float, dict[str, Any]], None]
FAST_WIRE_LABEL = "fast (unsealed: no signatures, no encryption)"


class RunLoop:
    """Running to the horizon, writing records, summarising and plotting: shared by the
    one-process :class:`Simulation` and the partitioned engine (sim/partitioned.py)."""

    sc: Scenario
    seed: int
    honest: list[int]
    byzantine: set[int]
    horizon: float
    period: float
    identity_work: dict[str, Any] | None = None
    """Bits, identities and seconds spent minting identity work (None: no work asked)."""

    def _start(self) -> None:
        raise NotImplementedError

    def _advance(self, t: float) -> None:
        """Simulate up to virtual time ``t``."""
        raise NotImplementedError

    def measure(self) -> dict[str, Any]:
        """One metrics record at the current virtual time."""
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _audit(self) -> dict[str, Any] | None:
        """The privacy audit of the final models (``audit:`` in the scenario), or None."""
        return None

    def _costs(self) -> tuple[list[int], Counter[str], Counter[str]]:
        """Clips per node, fault datagrams and attack datagrams sent."""
        raise NotImplementedError

    def run(
        self, out_dir: str | Path | None = None, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Run to the horizon, measuring every ``metrics.every_s``; returns the summary."""
        start = time.perf_counter()
        every = self.sc.metrics.every_s or self.period
        out = Path(out_dir) if out_dir else None
        records: list[dict[str, Any]] = []
        walls: list[float] = []  # wall seconds at each record (summary only: metrics are virtual)
        fh = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "scenario.yaml").write_text(
                yaml.safe_dump(self.sc.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
            )
            fh = (out / "metrics.jsonl").open("w", encoding="utf-8")
        between = collector.Between()
        try:
            with collector.paused():  # ~16% of a large run's wall: see sim/collector.py
                self._start()
                t = 0.0
                while t < self.horizon - 1e-9:
                    t = min(self.horizon, t + every)
                    self._advance(t)
                    between.at_measurement()  # the only collections during the run
                    rec = self.measure()
                    records.append(rec)
                    walls.append(round(time.perf_counter() - start, 3))
                    if fh is not None:
                        fh.write(json.dumps(rec, sort_keys=True) + "\n")
                        fh.flush()
                    if progress is not None:
                        progress(t, self.horizon, rec)
                audit = self._audit() if self.sc.audit.holdout_fraction > 0 else None
        finally:
            self._close()
            if fh is not None:
                fh.close()
        summary = self.summarize(records, time.perf_counter() - start)
        summary["wall_seconds_at_measurements"] = walls
        if audit is not None:
            summary["privacy_audit"] = audit
        if out is not None:
            (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", "utf-8")
            if self.sc.metrics.plots and summary["final"]["honest_mean_acc"] is not None:
                from flava_p2p.sim.plots import plot_accuracy

                summary["plots"] = [
                    str(plot_accuracy([(self.sc.name, records)], out / "accuracy.png"))
                ]
                if self.sc.data.arrival is not None:
                    from flava_p2p.sim.plots import plot_arrival

                    summary["plots"].append(str(plot_arrival(records, out / "arrival.png")))
                (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", "utf-8")
        return summary

    def summarize(self, records: list[dict[str, Any]], wall: float) -> dict[str, Any]:
        """Headline numbers of a run (the last record plus time-to-accuracy and costs)."""
        last = records[-1] if records else {}
        reached = next((r["t"] for r in records if (r["honest_mean_acc"] or 0) >= 0.8), None)
        sc = self.sc
        rounds_done = last.get("round_mean", 0.0)
        extra: dict[str, Any] = {"data": last["data"]} if "data" in last else {}
        sizes, faults_sent, attack_sent = self._costs()
        if sizes:
            extra["clips_per_node"] = {
                "min": int(min(sizes)),
                "median": float(np.median(sizes)),
                "max": int(max(sizes)),
            }
        return extra | {
            "name": sc.name,
            "seed": self.seed,
            "nodes": sc.nodes,
            "honest": len(self.honest),
            "byzantine": sorted(self.byzantine),
            "attack": sc.byzantine.attack if self.byzantine else None,
            "aggregation": sc.gossip.aggregation,
            "defence": defence_label(sc),
            "topology": sc.topology.kind,
            "wire": "real" if sc.wire == "real" else FAST_WIRE_LABEL,
            "learner": sc.learner.kind,
            "model": sc.learner.model if sc.learner.kind == "real" else None,
            "rounds": sc.rounds,
            "privacy": {
                "unit": "example" if sc.privacy.epsilon is not None else None,
                "target_epsilon": sc.privacy.epsilon,
                "epsilon_max": last.get("epsilon_max"),
                "delta": sc.privacy.delta if sc.privacy.epsilon is not None else None,
                **(
                    {
                        "node_level": {
                            "unit": "node (all of its data), from message noise",
                            "noise_multiplier": sc.privacy.message_noise_multiplier,
                            "clip": sc.privacy.message_clip,
                            "epsilon_max": last.get("node_epsilon_max"),
                            "delta": sc.privacy.delta,
                        }
                    }
                    if sc.privacy.message_noise_multiplier is not None
                    else {}
                ),
            },
            "final": {
                k: last.get(k)
                for k in (
                    "honest_mean_acc",
                    "honest_worst_acc",
                    "honest_median_acc",
                    "consensus_distance",
                    "bytes_sent",
                    "delivered",
                    "dropped",
                    "rejections",
                    "penalties",
                    "graylist_pairs",
                    "alive",
                )
            },
            "best_honest_mean_acc": max(
                (r["honest_mean_acc"] for r in records if r["honest_mean_acc"] is not None),
                default=None,
            ),
            "virtual_seconds_to_80pct": reached,
            "virtual_seconds": self.horizon,
            "wall_seconds": round(wall, 3),
            "rounds_per_wall_second": round(rounds_done / wall, 4) if wall > 0 else None,
            "faults_sent": dict(faults_sent),
            **({"identity_work": self.identity_work} if self.identity_work else {}),
            "attack_datagrams_sent": dict(attack_sent),
        }


class Simulation(RunLoop):
    """Build once, then :meth:`run`; everything random derives from ``seed``."""

    def __init__(
        self, scenario: Scenario, seed: int | None = None, owned: set[int] | None = None
    ) -> None:
        """``owned``: the nodes this process simulates when the run is partitioned over
        several (sim/partitioned.py); None simulates them all."""
        self.seed = scenario.seed if seed is None else seed
        self.owned = owned
        self.sc = scenario.model_copy(update={"seed": self.seed})
        sc, n = self.sc, self.sc.nodes
        self.byzantine = set(sc.byzantine_nodes())
        self.honest = [i for i in range(n) if i not in self.byzantine]
        self.attack = parse_attack(sc.byzantine.attack) if self.byzantine else None
        if sc.wire == "fast":
            log.warning("wire: fast: datagrams are NOT signed or encrypted in this run")
        self.learners: Learners = make_learners(sc, self.seed, owned)
        scorer = getattr(self.learners, "reference_scorer", None)
        #: The reference screen's loss on public clips (real learner with a validation split).
        self._reference_loss = scorer() if scorer is not None else None
        anchor = getattr(self.learners, "reference_anchor", None)
        self._reference_anchor = anchor() if anchor is not None else None
        self.links = SimLinks.build(sc.network, n, self.seed)
        self.net = VirtualNetwork(
            link=self.links,
            seed=self.seed,
            learner=self._train,
            record_events=False,
            on_event=self._on_event,
            train_delay=sc.learner.train_seconds,
            batch_learner=self.learners.train_many,
            owned=owned,
            shared_host=frozenset(self.byzantine if sc.byzantine.same_host else ()),
        )
        if hasattr(self.learners, "clock"):
            self.learners.clock = lambda: self.net.now  # clips arrive over virtual time
        self.identities = [
            Identity.from_seed(hashlib.sha256(f"flava-sim/{self.seed}/{i}".encode()).digest())
            for i in range(n)
        ]
        # Only a static topology pins views to a graph; dynamic and discovered views come from
        # peer sampling. (The complete graph once built for `dynamic` went unused and cost a
        # 10,000-node run 94 s and ~6 GB in each process.)
        self.neighbours: list[list[int]] = (
            neighbours(build_graph(sc.topology, n, self.seed)) if sc.topology.kind in STATIC else []
        )
        # A pre-shared network key (seeded): rogue fault hosts do not hold it.
        self.network_key = (
            hashlib.sha256(f"flava-sim/network-key/{self.seed}".encode()).digest()
            if sc.node.network_key
            else None
        )
        self.gossip = self._gossip_config()
        self.work = self._mint_work(n)
        self._descriptors: dict[int, PeerDescriptor] = {}
        for i in range(n):
            self.net.add(self._build_core(i, first_seq=0) if self.net.runs(i) else None)
        self._restore_views()
        self._faults: list[RogueHost] = []
        self._attackers: dict[int, NetworkAttacker] = {}
        self._attack_sent: Counter[str] = Counter()
        self._forger_key = PrivateKey(hashlib.sha256(f"forger/{self.seed}".encode()).digest())
        self._events: Counter[str] = Counter()
        self.period = sc.gossip.period_s
        self.horizon = sc.rounds * self.period
        self._schedule_churn()
        self._schedule_faults()

    # ------------------------------------------------------------------ construction
    def _gossip_config(self) -> Any:
        sc, kind = self.sc, self.sc.topology.kind
        n = sc.nodes
        if kind in STATIC:
            degree = max(len(peers) for peers in self.neighbours)
            # Static graph: the view is pinned to the neighbours (no shuffles) and every round
            # goes to all of them, as in decentralizepy. model_copy skips validation on
            # purpose: a complete graph of 100 nodes needs a fanout above the config limit.
            return sc.gossip.model_copy(
                update={"fanout": degree, "view_size": max(2, degree), "shuffle_period_s": 1e12}
            )
        if kind == "dynamic":
            known = sc.topology.known_peers
            return sc.gossip.model_copy(update={"view_size": max(2, min(n - 1, known))})
        return sc.gossip

    def _address(self, i: int) -> str:
        host, port = self.net.address(i)
        return make_multiaddr(host, port, self.identities[i].peer_id)

    def _descriptor(self, i: int) -> PeerDescriptor:
        # One immutable object per node, shared by every view that holds it (memory).
        cached = self._descriptors.get(i)
        if cached is not None:
            return cached
        ident = self.identities[i]
        desc = PeerDescriptor(
            ident.peer_id,
            ident.keys.box_key,
            ident.keys.box_key_sig,
            (self._address(i),),
            work=self.work[i],
        )
        self._descriptors[i] = desc
        return desc

    def _mint_work(self, n: int) -> list[bytes]:
        """Every node's identity-work nonce (``node.identity_work_bits``), minted for real and
        timed: the cost a Sybil host pays per identity."""
        bits = self.sc.node.identity_work_bits
        if bits <= 0:
            return [b""] * n
        started = time.perf_counter()
        work = [mint_work(ident.peer_id, NETWORK_ID, bits) for ident in self.identities]
        seconds = time.perf_counter() - started
        self.identity_work = {
            "bits": bits,
            "identities": n,
            "seconds": round(seconds, 3),
            "seconds_per_identity": round(seconds / n, 4),
        }
        return work

    def node_config(self, i: int) -> NodeConfig:
        """Node i's settings as the ``node.yaml`` a real node would run with."""
        sc = self.sc
        discovered = sc.topology.kind == "discovered"
        host, port = self.net.address(0)
        boot = [make_multiaddr(host, port, self.identities[0].peer_id)]
        network = NetworkConfig(
            network_id=NETWORK_ID,
            mtu=sc.node.mtu,
            bootstrap=boot if discovered and i != 0 else [],
            multicast_beacons=sc.node.multicast_beacons,
            beacon_period_s=sc.node.beacon_period_s,
            identity_work_bits=sc.node.identity_work_bits,
        )
        # gossip is taken as is: static graphs pin fanout/view above the node.yaml limits.
        return NodeConfig.model_construct(
            **{
                **NodeConfig().__dict__,
                "network": network,
                "gossip": self.gossip,
                "privacy": sc.privacy,
                "seed": self.seed,
            }
        )

    def _core_spec(self, i: int) -> CoreSpec:
        """Node i through the same assembly a real node uses."""
        model = ModelIdentity(
            self.learners.genesis,
            self.learners.schema,
            getattr(self.learners, "schema_card", {}),
        )
        return core_spec(
            self.node_config(i),
            self.identities[i],
            model,
            advertised=[self._address(i)],
            network_key=self.network_key,
            rng_seed=f"{self.seed}:{i}",
            own_work=self.work[i],
        )

    def _build_core(self, i: int, first_seq: int, resume: Resume | None = None) -> NodeCore:
        core = assemble_core(
            self._core_spec(i),
            first_seq=first_seq,
            # Seeded, for reproducible runs; a real node draws message noise from OS entropy.
            noise_rng=np.random.default_rng([self.seed, i, 0x5EED]),
            resume=resume,
            endpoint=UnsealedEndpoint if self.sc.wire == "fast" else WireEndpoint,
        )
        core.reference_loss = self._reference_loss
        core.reference_anchor = self._reference_anchor
        if i in self.byzantine:
            attach_attack(
                core,
                self.attack,
                np.random.default_rng([self.seed, i, 0xBAD]),
                n_byzantine=len(self.byzantine),
                n_honest=len(self.honest),
            )
        return core

    def _restore_views(self) -> None:
        kind, n = self.sc.topology.kind, self.sc.nodes
        if kind == "discovered":
            return
        for i, core in enumerate(self.net.nodes):
            if not self.net.runs(i):
                continue
            if kind in STATIC:
                peers = self.neighbours[i]
            else:
                known = self.sc.topology.known_peers
                if n - 1 <= known:
                    peers = [j for j in range(n) if j != i]
                else:
                    # Each node's own seeded draw, so partitions build the same views. Drawn
                    # from range(n - 1) then shifted past i: the same draw as from the list of
                    # the others, without building that list per node (O(n²) at 10,000).
                    rng = random.Random(f"{self.seed}/view/{i}")
                    peers = [j + (j >= i) for j in rng.sample(range(n - 1), known)]
            core.restore_view([self._descriptor(j) for j in peers])

    def _schedule_churn(self) -> None:
        for t, i, up in churn_schedule(self.sc.network.churn, self.honest, self.horizon, self.seed):
            if self.net.runs(i):
                self.net.call_at(t, partial(self._set_up, i, up), i)

    def _set_up(self, i: int, up: bool) -> None:
        """Churn: a node goes offline, or comes back and resumes like a restarted real node
        (same identity, model, round and last view; seqnos continue, never reused)."""
        if not up:
            self.net.set_down(i, True)
            self._events["churn_down"] += 1
            return
        old = self.net.nodes[i]
        core = self._build_core(i, first_seq=old.wire.next_seq, resume=snapshot(old))
        self.net.down.discard(i)
        self.net.set_node(i, core)
        self._events["churn_up"] += 1

    def _schedule_faults(self) -> None:
        f = self.sc.faults
        if f.count and self.owned is not None:
            raise FlavaError(
                "faults.count > 0 needs the whole network in one process (rogue hosts pick "
                "targets among all nodes): run it with --engine local."
            )
        for k in range(f.count):
            rng = random.Random(f"{self.seed}:fault:{k}")
            self._faults.append(RogueHost(("192.0.2.1", 40000 + k), list(f.kinds), f.rate, rng))
        if self.attack is not None and self.attack.kind == "network":
            # The same NetworkAttacker a real node runs, on the virtual network's links.
            for i in sorted(self.byzantine):
                if not self.net.runs(i):
                    continue
                attacker = NetworkAttacker(self.attack, np.random.default_rng([self.seed, i, 0xA7]))
                self._attackers[i] = attacker
                self.net.call_at(attacker.next_delay(), partial(self._attack_fire, i), i)
            self.net.on_send = self._remember_sent
        for fault in self._faults:
            self.net.call_at(fault.rng.expovariate(fault.rate), partial(self._fire, fault))

    def _remember_sent(self, i: int, addr: tuple[str, int], datagram: bytes) -> None:
        attacker = self._attackers.get(i)
        if attacker is not None:
            attacker.remember(addr, datagram)

    def _attack_fire(self, i: int) -> None:
        """Byzantine node i's network attack fires: to peers in its view, over its links."""
        attacker = self._attackers[i]
        if i not in self.net.down:
            core = self.net.nodes[i]
            targets = [a for p in core.view.peers() if (a := core.address_of(p)) is not None]
            src = self.net.address(i)
            for addr, datagram in attacker.fire(targets):
                self.net.send_from(i, src, addr, datagram)
                self._attack_sent[self.attack.name if self.attack else "?"] += 1
        self.net.call_at(self.net.now + attacker.next_delay(), partial(self._attack_fire, i), i)

    def _fire(self, fault: RogueHost) -> None:
        """Send one faulty datagram (or a flood burst) to a random honest node, reschedule."""
        kind = fault.rng.choice(fault.kinds)
        targets = [i for i in self.honest if i not in self.net.down]
        if targets:
            for _ in range(FLOOD_BURST if kind == "flood" else 1):
                self._inject(fault, kind, fault.rng.choice(targets))
        self.net.call_at(
            self.net.now + fault.rng.expovariate(fault.rate), partial(self._fire, fault)
        )

    def _inject(self, fault: RogueHost, kind: str, target: int) -> None:
        rng = fault.rng
        if kind == "replay":
            # A real datagram some honest node sent, verbatim, to its original recipient.
            last = self.net.last_sent[rng.choice(self.honest)]
            if last is None:
                return
            target, datagram = last
        elif kind == "forged":
            victim = rng.choice([i for i in self.honest if i != target] or self.honest)
            datagram = forged_ping(
                self._forger_key,
                network_id=NETWORK_ID,
                claimed_sender=self.identities[victim].peer_id,
                recipient=self.identities[target].peer_id,
                recipient_box_key=self.identities[target].keys.box_key,
                now=self.net.now,
                rng=rng,
            )
        else:
            datagram = garbage(rng)
        fault.sent[kind] += 1
        self.net.inject(fault.addr, target, datagram, delay=rng.uniform(0.001, 0.02))

    # ------------------------------------------------------------------ callbacks
    def _train(self, i: int, model: Vec) -> tuple[Vec, int, DpInfo]:
        return self.learners.train(i, model)

    def _on_event(self, i: int, ev: Event) -> None:
        self._events[type(ev).__name__] += 1

    # ------------------------------------------------------------------ measuring
    def measure(self) -> dict[str, Any]:
        """One metrics record at the current virtual time (JSON-ready, deterministic)."""
        return combine_measures(self.sc, self.byzantine, [self.measure_part()])

    def measure_part(self) -> dict[str, Any]:
        """What this process knows of its own nodes at the current virtual time, in a form
        whose parts from several partitions :func:`combine_measures` merges exactly."""
        net = self.net
        mine = [i for i in range(self.sc.nodes) if net.runs(i)]
        honest = [i for i in self.honest if net.runs(i)]
        up = [i for i in honest if i not in net.down]
        models = {i: net.nodes[i].model for i in up}
        rejections: Counter[str] = Counter()
        penalties: Counter[str] = Counter()
        for i in mine:
            node = net.nodes[i]
            rejections.update(node.wire.rejections.by_reason())
            for k, v in node.counters.items():
                if k.startswith("penalty_"):
                    penalties[k[len("penalty_") :]] += v
        stats = getattr(self.learners, "data_stats", None)
        return {
            "t": net.now,
            "models": models,
            "rounds": {i: net.nodes[i].round for i in up},
            "acc": self.learners.evaluate(models) if self.learners.n_classes else {},
            "eps": {i: e for i in honest if (e := self._epsilon(i)) is not None},
            "node_eps": {
                i: mn.epsilon() for i in honest if (mn := net.nodes[i].message_noise) is not None
            },
            "rejections": rejections,
            "penalties": penalties,
            "graylisted": self._graylist_pairs(honest),
            "bytes_sent": {i: net.bytes_sent[i] for i in mine},
            "delivered": net.delivered,
            "dropped": net.dropped,
            "events": self._events,
            "data": stats(mine) if stats is not None and self.sc.data.arrival else None,
            "attack_sent": self._attack_sent,
            "clips_per_node": {
                i: n
                for i, n in enumerate(getattr(self.learners, "clips_per_node", []) or [])
                if net.runs(i)
            },
        }

    def _epsilon(self, i: int) -> float | None:
        """Node i's ε as of its last finished burst (before any: the learner's initial)."""
        if i in self.net.epsilon_reported:
            return self.net.epsilon_reported[i]
        return self.learners.epsilon(i)

    # ------------------------------------------------------------------ running (RunLoop)
    def _start(self) -> None:
        self.net.start()

    def _advance(self, t: float) -> None:
        self.net.run_until(t)

    def _audit(self) -> dict[str, Any] | None:
        audit = getattr(self.learners, "audit", None)
        if audit is None:
            return {"skipped": "the audit needs the real learner"}
        up = [i for i in self.honest if self.net.runs(i) and i not in self.net.down]
        models = {i: self.net.nodes[i].model for i in up}
        result: dict[str, Any] = audit(models, self.sc.audit.max_nodes, self.sc.privacy.delta)
        return result

    def _graylist_pairs(self, honest: list[int]) -> Counter[str]:
        """(honest node, peer) pairs where the node graylists the peer now / ever, by whether
        the peer is Byzantine (caught) or honest (a false positive)."""
        byzantine = {self.identities[b].peer_id for b in self.byzantine}
        out: Counter[str] = Counter(byzantine_now=0, byzantine_ever=0, honest_now=0, honest_ever=0)
        for i in honest:
            for peer, until in self.net.nodes[i].scores.graylist_terms().items():
                kind = "byzantine" if peer in byzantine else "honest"
                out[f"{kind}_now"] += until > self.net.now
                out[f"{kind}_ever"] += 1
        return out

    def _close(self) -> None:
        self.learners.close()

    def _costs(self) -> tuple[list[int], Counter[str], Counter[str]]:
        sizes = list(getattr(self.learners, "clips_per_node", None) or [])
        return sizes, sum((f.sent for f in self._faults), Counter()), self._attack_sent


def combine_measures(
    sc: Scenario, byzantine: set[int], parts: list[dict[str, Any]]
) -> dict[str, Any]:
    """One metrics record from the :meth:`Simulation.measure_part` of every partition:
    node-keyed values are ordered by node and counters summed, so the record is the same
    byte for byte however the nodes were split."""

    def merged(key: str) -> dict[int, Any]:
        out: dict[int, Any] = {}
        for p in parts:
            out.update(p[key])
        return dict(sorted(out.items()))

    models, rounds, acc, eps = merged("models"), merged("rounds"), merged("acc"), merged("eps")
    node_eps = list(merged("node_eps").values())
    sent = merged("bytes_sent")
    honest = [i for i in range(sc.nodes) if i not in byzantine]
    up = list(models)
    stack = np.stack([models[i] for i in up]) if up else np.zeros((0, 1), np.float32)
    centre = stack.mean(0) if len(stack) else stack
    consensus = float(np.linalg.norm(stack - centre, axis=1).mean()) if len(stack) else 0.0
    values = list(acc.values())
    eps_values = list(eps.values())

    def total(key: str) -> dict[str, int]:
        c: Counter[str] = Counter()
        for p in parts:
            c.update(p[key])
        return dict(sorted(c.items()))

    rec: dict[str, Any] = {
        "t": round(parts[0]["t"], 6),
        "round_mean": float(np.mean(list(rounds.values()))) if up else 0.0,
        "alive": len(up),
        "honest_mean_acc": float(np.mean(values)) if values else None,
        "honest_worst_acc": float(np.min(values)) if values else None,
        "honest_median_acc": float(np.median(values)) if values else None,
        "acc": {str(k): round(v, 6) for k, v in acc.items()},
        "consensus_distance": round(consensus, 6),
        "epsilon_max": max(eps_values) if eps_values else None,
        "epsilon_mean": float(np.mean(eps_values)) if eps_values else None,
        **({"node_epsilon_max": max(node_eps)} if node_eps else {}),
        "bytes_sent": int(sum(sent.values())),
        "bytes_sent_honest_mean": float(np.mean([sent[i] for i in honest])),
        "delivered": sum(p["delivered"] for p in parts),
        "dropped": sum(p["dropped"] for p in parts),
        "rejections": total("rejections"),
        "penalties": total("penalties"),
        # Pairs (honest node, peer) graylisted: Byzantine peers caught, honest ones wrongly.
        "graylist_pairs": total("graylisted"),
        "events": total("events"),
    }
    if parts[0]["data"] is not None:
        rec["data"] = {k: sum(p["data"][k] for p in parts) for k in parts[0]["data"]}
    return rec


def run_scenario(
    scenario: Scenario,
    out_dir: str | Path | None = None,
    seed: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Build and run one simulation (see :class:`Simulation`)."""
    return Simulation(scenario, seed).run(out_dir, progress)


def defence_label(sc: Scenario) -> str:
    """The merging rule, marked when the pre-merge screens are not all at work:
    ``clipped``, ``mean (unscreened)``, ``mean (norm bound only)``."""
    names = {"opposed_cosine": "opposed check", "max_norm_ratio": "norm bound",
             "max_one_sided": "one-sided check", "min_alignment": "alignment check"}  # fmt: skip
    on = [label for key, label in names.items() if getattr(sc.gossip, key) is not None]
    if len(on) == len(names):
        return sc.gossip.aggregation
    if not on:
        return f"{sc.gossip.aggregation} (unscreened)"
    return f"{sc.gossip.aggregation} ({' + '.join(on)} only)"
