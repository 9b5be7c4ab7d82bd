"""Simulation scenarios: one YAML file says everything a run depends on (plus ``--seed``).

Validated like node configs (frozen pydantic models, unknown keys refused with the allowed
list). Every field has a default, so the smallest scenario is ``name: x``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from flava_p2p.config import (
    FeatureConfig,
    GossipConfig,
    PrivacyConfig,
    TrainingConfig,
    _Strict,
    check_model_frontend,
    load_config,
)

Distribution = Literal["constant", "uniform", "exponential", "lognormal", "normal", "weibull"]


class Dist(_Strict):
    """A random duration in seconds. ``mean`` (and ``sd``/``low``/``high``/``shape`` as needed).

    constant: always ``mean``; uniform: in [low, high]; exponential: rate 1/mean; lognormal and
    normal: given mean and sd (normal truncated at 0); weibull: given mean and shape k.
    """

    dist: Distribution = "constant"
    mean: float = Field(default=0.0, ge=0)
    sd: float = Field(default=0.0, ge=0)
    low: float = Field(default=0.0, ge=0)
    high: float = Field(default=0.0, ge=0)
    shape: float = Field(default=1.0, gt=0)


class BurstLoss(_Strict):
    """Gilbert–Elliott bursty loss per directed link: a good and a bad state."""

    p_good_to_bad: float = Field(default=0.0, ge=0, le=1)
    p_bad_to_good: float = Field(default=0.3, gt=0, le=1)
    loss_in_bad: float = Field(default=0.5, ge=0, le=1)


class Partition(_Strict):
    """Between ``at`` and ``heal`` (virtual seconds) the nodes are cut into groups.

    ``groups`` lists node indices per group (nodes not listed form one more group), or
    ``fraction`` puts that seeded random share of the nodes on one side.
    """

    at: float = Field(ge=0)
    heal: float = Field(gt=0)
    groups: list[list[int]] | None = None
    fraction: float | None = Field(default=None, gt=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> Partition:
        if self.heal <= self.at:
            raise ValueError("heal must be after at")
        if (self.groups is None) == (self.fraction is None):
            raise ValueError("give exactly one of groups or fraction")
        return self


class Churn(_Strict):
    """Nodes leave and come back: alternating online sessions and offline periods.

    ``trace`` is a CSV file of ``node,down_at,up_at`` rows (seconds) instead of distributions.
    A node that comes back restarts its protocol state but keeps its model, ledger and
    identity, like a real node resuming from its checkpoint.
    """

    fraction: float = Field(default=0.0, ge=0, le=1)
    """Share of honest nodes that churn (seeded choice); the rest stay up."""
    session: Dist = Field(default_factory=lambda: Dist(dist="exponential", mean=120.0))
    downtime: Dist = Field(default_factory=lambda: Dist(dist="exponential", mean=30.0))
    trace: str | None = None


class NetworkModel(_Strict):
    """Per-datagram link behaviour between every pair of nodes."""

    latency: Dist = Field(default_factory=lambda: Dist(dist="uniform", low=0.005, high=0.05))
    min_latency_s: float = Field(default=0.0, ge=0)
    """No datagram arrives sooner than this (a floor under every latency draw, as light and
    routers impose). A partitioned run (``--engine ray``) advances its processes in windows
    of this length, so it must be > 0 there; larger is faster."""
    bandwidth_bps: float | None = Field(default=None, gt=0)
    """Uplink of every node in bits/s: datagrams queue behind each other (None: unlimited)."""
    loss: float = Field(default=0.0, ge=0, le=1)
    """Independent loss probability per datagram."""
    burst: BurstLoss | None = None
    duplicate: float = Field(default=0.0, ge=0, le=1)
    reorder: float = Field(default=0.0, ge=0, le=1)
    """Probability a datagram is held back by an extra ``reorder_delay``."""
    reorder_delay: Dist = Field(default_factory=lambda: Dist(dist="uniform", low=0.05, high=0.3))
    partitions: list[Partition] = Field(default_factory=list)
    churn: Churn = Field(default_factory=Churn)


TopologyKind = Literal[
    "complete",
    "ring",
    "regular",
    "erdos_renyi",
    "watts_strogatz",
    "barabasi_albert",
    "dynamic",
    "discovered",
]


class Topology(_Strict):
    """Who may talk to whom.

    Static graphs (networkx) pin each node's view to its neighbours and send every round to all
    of them (decentralizepy-style). ``dynamic`` is Epidemic Learning: everyone knows everyone and
    sends to ``gossip.fanout`` fresh random peers each round. ``discovered`` gives every node
    only node 0 as bootstrap and leaves the rest to peer sampling, exactly as real nodes do.
    """

    kind: TopologyKind = "dynamic"
    degree: int = Field(default=4, ge=1)
    """k for ``regular`` and ``watts_strogatz``."""
    p: float = Field(default=0.2, ge=0, le=1)
    """Edge probability (erdos_renyi) or rewiring probability (watts_strogatz)."""
    m: int = Field(default=2, ge=1)
    """Edges per new node for ``barabasi_albert``."""
    known_peers: int = Field(default=1024, ge=2)
    """``dynamic``: how many peers (a seeded random sample) each node knows when the network
    is larger; Cyclon shuffles keep those samples fresh. Memory grows as nodes × this."""


class Arrival(_Strict):
    """Clips reach each node over virtual time, as an owner keeps recording.

    Each node's clips arrive in a seeded random order: ``initial`` of them are there at t = 0,
    the rest arrive at ``rate`` clips per virtual second (Poisson), or by a ``schedule`` of
    ``[t, fraction present]`` points. A node trains on what has arrived; every clip gets its
    own privacy budget (per-clip accounting) and retires when it is spent.
    """

    initial: float = Field(default=0.25, ge=0, le=1)
    rate: float | None = Field(default=None, gt=0)
    schedule: list[tuple[float, float]] | None = None

    @model_validator(mode="after")
    def _one(self) -> Arrival:
        if (self.rate is None) == (self.schedule is None):
            raise ValueError("give exactly one of rate or schedule")
        if self.schedule is not None:
            ts = [t for t, _ in self.schedule]
            fr = [f for _, f in self.schedule]
            if ts != sorted(ts) or any(not 0 <= f <= 1 for f in fr) or fr != sorted(fr):
                raise ValueError(
                    "schedule: [t, fraction] points with t and fraction non-decreasing, "
                    "fraction in [0, 1]"
                )
        return self


class DataSpec(_Strict):
    """Where node data comes from (real learner)."""

    task: str | None = None
    """Task card (YAML): its ordered labels define the model (folders not among them are
    ignored) and its identity enters the schema, as on a real node; the scenario's own
    ``learner``, ``data.features`` and ``privacy`` still say how nodes train. None: the corpus
    folders are the labels."""
    label_fraction: float = Field(default=1.0, gt=0, le=1)
    """Each node keeps only the clips of a seeded random share of the labels (at least one):
    devices that recorded only some of the keywords."""
    arrival: Arrival | None = None
    """Clips arrive over time (None: every node has all its clips from the start)."""

    corpus: str = "data/synth"
    """Speech Commands layout; voiced with espeak-ng on first use if missing (see synth_*)."""
    synthesize: bool = True
    """Voice a missing ``corpus`` with espeak-ng. False for real speech (an imported corpus):
    a missing one is then an error saying how to import it, never a synthetic stand-in."""
    synth_speakers: int = Field(default=60, ge=2)
    synth_takes: int = Field(default=5, ge=1)
    """Takes per speaker and word when the corpus has to be generated."""
    partition: Literal["speaker", "iid", "dirichlet"] = "speaker"
    alpha: float = Field(default=0.5, gt=0)
    """Dirichlet concentration for ``partition: dirichlet``."""
    clips_per_node: int | None = Field(default=None, ge=1)
    """``speaker``: every node holds exactly this many clips of one speaker — each speaker's
    clips are cut into whole shares of this size and ``nodes`` shares drawn (seeded), so runs
    with different node counts have the same data per node."""
    quantity_skew: float | None = Field(default=None, ge=0)
    """``iid``: node sizes follow a lognormal of this shape (1.0: the largest node holds
    ~10× the median) instead of being equal."""
    eval_split: Literal["test", "heldout"] = "test"
    """Accuracy on the testing-list speakers, or on all held-out (validation + test) speakers."""
    eval_corpus: str | None = None
    """Measure accuracy on every clip of this other corpus instead (same label folders), e.g.
    nodes that learn from synthetic speech, evaluated on real recordings of the same words."""
    cache_dir: str | None = ".cache/features"
    features: FeatureConfig = Field(default_factory=FeatureConfig)


class LearnerSpec(_Strict):
    """Local learning. ``real``: a registered keyword model (``model``: by default a linear
    head over the frozen speech encoder; ``dscnn`` or ``aligned_linear`` with
    ``data.features.kind: logmel``) with DP-SGD (the node's own trainer, unchanged). ``synthetic``:
    softmax regression on Gaussian blobs with the same DP-SGD recipe in numpy, for
    protocol-scale runs. ``none``: models never change (protocol only: view, liveness, wire,
    crypto)."""

    kind: Literal["real", "synthetic", "none"] = "real"
    model: str = "embed_linear"
    """Registered model of the ``real`` learner: ``embed_linear`` (default), ``embed_mlp``,
    ``dscnn`` or ``aligned_linear``."""
    pooling: Literal["meanmax", "mean", "attention"] = "meanmax"
    """Window pooling of the embed_* heads."""
    width: int = Field(default=32, ge=8, le=512)
    training: TrainingConfig = Field(
        default_factory=lambda: TrainingConfig(
            batch_size=32, lr=0.5, momentum=0.9, local_steps=5, spec_augment=False
        )
    )
    threads: int = Field(default=2, ge=1, le=64)
    """torch threads of the simulation process (workers use one each)."""
    batched: bool | None = None
    """Train every node's burst in one batched tensor program (``sim/vector_learners.py``:
    same seeds, same weights to float rounding, same ε as the per-node trainers). None: where
    the model allows it (DP-SGD of ``embed_linear`` with fixed pooling, no clip arrivals)."""
    workers: int = Field(default=1, ge=1, le=64)
    """Processes training the real model's nodes in parallel (e.g. one per core); needs
    ``train_seconds`` > 0 so that several bursts are in flight at once."""
    train_seconds: float = Field(default=0.0, ge=0)
    """Virtual time one training burst takes on a device; the node gossips its result this
    much later. Bursts requested within this window run together (in parallel)."""
    synthetic_dim: int = Field(default=32, ge=2)
    synthetic_classes: int = Field(default=10, ge=2)
    synthetic_samples: int = Field(default=64, ge=1)
    """Examples per node for the synthetic learner."""


class ByzantineSpec(_Strict):
    """Which nodes misbehave and how (any ``attacks/`` spec, e.g. ``alie:z=1.5``)."""

    count: int = Field(default=0, ge=0)
    fraction: float | None = Field(default=None, ge=0, lt=1)
    """Overrides ``count``: this share of the nodes (rounded)."""
    nodes: list[int] | None = None
    """Explicit indices; overrides both."""
    attack: str = "alie"
    """``none`` runs the same scenario without Byzantine nodes (the attack-free baseline)."""
    same_host: bool = False
    """Sybil identities: the Byzantine nodes are identities one host minted, all at one IP
    address (distinct ports). They hold copies of honest nodes' data rather than a share of
    their own, so the honest nodes' data is exactly what it is with the Byzantine nodes absent
    (``nodes`` minus their count): compare with that run as the attack-free baseline."""


FaultKind = Literal["forged", "replay", "malformed", "flood"]
_DEFAULT_FAULTS: tuple[FaultKind, ...] = ("forged", "replay", "malformed")


class ProtocolFaults(_Strict):
    """Datagram-level faults injected by ``count`` extra rogue hosts, each at ``rate``/s."""

    count: int = Field(default=0, ge=0)
    kinds: list[FaultKind] = Field(default_factory=lambda: list(_DEFAULT_FAULTS))
    rate: float = Field(default=2.0, gt=0)
    """Datagrams per second per rogue host (``flood`` multiplies it by 50)."""


class MetricsSpec(_Strict):
    """What is measured and how often (virtual seconds)."""

    every_s: float | None = Field(default=None, gt=0)
    """Default: one gossip period."""
    eval_examples: int | None = Field(default=None, ge=1)
    """Cap on held-out examples per evaluation (None: all)."""
    plots: bool = True


class AuditSpec(_Strict):
    """Membership-inference audit of the nodes' final models (``flava_p2p/learning/audit.py``).

    Needs non-members from the nodes' own speakers: ``holdout_fraction`` of each node's clips
    is set aside at random and never trained on. 0 (the default) turns the audit off and trains
    on everything, so existing scenarios keep their figures."""

    holdout_fraction: float = Field(default=0.0, ge=0.0, le=0.5)
    max_nodes: int = Field(default=64, ge=1)
    """Audit at most this many honest nodes (the first by index)."""
    canaries: int = Field(default=0, ge=0, le=1000)
    """Per node, this many of its set-aside clips (at most half of them) become *canaries*:
    given a wrong label and trained on or not by a fair coin. Their losses give a
    worst-case-leaning ε lower bound (a mislabelled clip can only be fitted by memorising
    it). 0: none."""


class NodeSettings(_Strict):
    """What a real node sets in node.yaml's network section, for every simulated node."""

    mtu: int = Field(default=1200, ge=512, le=65000)
    """Datagram payload budget; larger messages are fragmented (and repaired by NACK)."""
    network_key: bool = False
    """All nodes share a (seeded) pre-shared network key, as ``network.network_key_file`` does
    for real nodes; datagrams without its MAC (rogue fault hosts) are dropped before parsing."""
    multicast_beacons: bool = False
    """Nodes announce themselves by signed HELLO beacons to a multicast group, which the
    virtual network delivers to every node, as a LAN does."""
    beacon_period_s: float = Field(default=5.0, gt=0)
    identity_work_bits: int = Field(default=0, ge=0, le=28)
    """``network.identity_work_bits``: every node (Sybils included) mints a nonce of this
    many bits before the run (timed, in the summary), and peers without one are ignored."""


class Scenario(_Strict):
    """One simulation: nodes, data, learning, privacy, network, faults and measurements."""

    name: str = "scenario"
    seed: int = 0
    nodes: int = Field(default=16, ge=2)
    rounds: int = Field(default=20, ge=1)
    """Run for ``rounds`` gossip periods of virtual time."""
    gossip: GossipConfig = Field(
        default_factory=lambda: GossipConfig(period_s=10.0, fanout=2, view_size=16)
    )
    topology: Topology = Field(default_factory=Topology)
    data: DataSpec = Field(default_factory=DataSpec)
    learner: LearnerSpec = Field(default_factory=LearnerSpec)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    """The nodes' privacy settings — the same schema as a node's ``privacy:`` section.
    ``epsilon: E`` is short for ``enabled: true, target_epsilon: E`` (``null``: no DP).
    ``planned_steps`` defaults to rounds × local_steps here when not given."""
    network: NetworkModel = Field(default_factory=NetworkModel)
    byzantine: ByzantineSpec = Field(default_factory=ByzantineSpec)
    faults: ProtocolFaults = Field(default_factory=ProtocolFaults)
    node: NodeSettings = Field(default_factory=NodeSettings)
    wire: Literal["real", "fast"] = "real"
    """``real``: every datagram signed (Ed25519) and encrypted (NaCl Box), as on a real node.
    ``fast``: UNSEALED — no signatures, no encryption (everything else of the wire kept), for
    scale studies whose question is not the wire; the summary says so. Never the default."""
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    audit: AuditSpec = Field(default_factory=AuditSpec)

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        if self.learner.train_seconds >= self.gossip.period_s * (1 - self.gossip.jitter):
            raise ValueError(
                "learner.train_seconds must be shorter than the shortest gossip period "
                "(gossip.period_s × (1 − jitter))"
            )
        if self.learner.kind == "real":
            check_model_frontend(self.learner.model, self.data.features.kind, "learner.model")
        if "planned_steps" not in self.privacy.model_fields_set:
            # A node plans its DP budget for one burst of local_steps per gossip round. Fixed
            # here, so the resolved scenario (scenario.yaml, worker processes) says it outright.
            steps = max(1, self.rounds * self.learner.training.local_steps)
            planned = self.privacy.model_copy(update={"planned_steps": steps})
            object.__setattr__(self, "privacy", planned)  # frozen model: set once, here
        byz = self.byzantine
        if byz.nodes is not None and any(not 0 <= i < self.nodes for i in byz.nodes):
            raise ValueError(f"byzantine.nodes must be node indices in [0, {self.nodes})")
        if byz.attack != "none":
            from flava_p2p.attacks import AttackError, parse_attack

            try:
                parse_attack(byz.attack)
            except AttackError as exc:
                raise ValueError(f"byzantine.attack: {exc}") from None
        return self

    def byzantine_nodes(self) -> list[int]:
        """Indices of the Byzantine nodes (the last ones, unless listed)."""
        byz = self.byzantine
        if byz.attack == "none":
            return []
        if byz.nodes is not None:
            return sorted(set(byz.nodes))
        count = round(byz.fraction * self.nodes) if byz.fraction is not None else byz.count
        count = min(count, self.nodes - 1)
        return list(range(self.nodes - count, self.nodes))


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML (errors name the field and what is allowed)."""
    return load_config(path, Scenario)
