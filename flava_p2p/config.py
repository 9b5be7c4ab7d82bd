"""YAML configuration files → validated, frozen pydantic models.

Every file in ``configs/`` maps to one top-level model here. Loading never raises a raw pydantic
or YAML exception at the user: :func:`load_config` turns any problem into a :class:`ConfigError`
whose message names the file, the field path, what was wrong and what is allowed.
"""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from flava_p2p.errors import FlavaError

__all__ = [
    "ApiConfig",
    "ConfigError",
    "DataConfig",
    "FeatureConfig",
    "GossipConfig",
    "IdentityConfig",
    "LoggingConfig",
    "ModelConfig",
    "NetworkConfig",
    "NodeConfig",
    "PrivacyConfig",
    "TrainingConfig",
    "load_config",
]


class ConfigError(FlavaError, ValueError):
    """A configuration file could not be used; the message says where, what and how to fix it."""


class _Strict(BaseModel):
    """Base for every config section: unknown keys are errors (typos must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


LogFormat = Literal["console", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]


class LoggingConfig(_Strict):
    """How the node writes its structured logs."""

    format: LogFormat = "console"
    """``console`` for people, ``json`` (one object per line) for log shippers."""
    level: LogLevel = "info"


class IdentityConfig(_Strict):
    """Where the node's long-term keys live."""

    keystore: Path = Path("identity.key")
    """Keystore file, relative to the node home; created by ``flava-node init`` with mode 0600."""
    passphrase_env: str | None = None
    """Name of an environment variable holding the keystore passphrase (None: unencrypted)."""


class NetworkConfig(_Strict):
    """Transport and admission settings."""

    network_id: str = Field(default="flava-default", min_length=1, max_length=64)
    """Nodes only talk to nodes with the same network id (it is in every signed header)."""
    listen: str = "/ip4/127.0.0.1/udp/0"
    """Multiaddr to bind; port 0 picks a free port."""
    bootstrap: list[str] = Field(default_factory=list)
    """Multiaddrs (``/ip4/…/udp/…/p2p/<PeerID>``) of nodes to contact first."""
    network_key_file: Path | None = None
    identity_work_bits: int = Field(default=0, ge=0, le=32)
    """Identity work every peer must prove (``protocol/identity_work.py``): minting an
    identity takes ~2^bits hashes (22 bits: ~2 s here), checking one takes one hash. A task
    card's ``identity_work_bits`` sets it for everyone on the task. 0: no work (development
    networks without a task card)."""
    """Optional file with a 32-byte pre-shared network key; outsiders are dropped before parsing."""
    mtu: int = Field(default=1200, ge=512, le=65000)
    """Maximum datagram payload in bytes; larger messages are chunked."""
    multicast_beacons: bool = False
    """Announce and discover peers on the LAN by multicast (opt-in). A beacon is this node's
    signed HELLO (PeerID, signed X25519 key, addresses), sent every ``beacon_period_s`` to
    ``beacon_group``; nodes that hear it add the sender to their view. IPv4 only."""
    beacon_group: str = "239.255.70.71:7947"
    """Multicast ``group:port`` for beacons (239.255.0.0/16 is site-local by RFC 2365)."""
    beacon_interface: str = "0.0.0.0"  # noqa: S104 - selects a multicast interface, not a bind
    """IPv4 address of the interface to beacon on; 0.0.0.0 = the system's default. Use
    127.0.0.1 to confine beacons to this host (several nodes on one machine)."""
    beacon_period_s: float = Field(default=5.0, gt=0)
    """Mean seconds between two beacons (jittered like every other period)."""
    genesis_seed: int = Field(default=0, ge=0)
    """Every node of a network derives the same genesis model from this seed."""
    transport: Literal["udp", "libp2p", "both"] = "udp"
    """Which carriers the node speaks. ``udp``: FLAVA's own wire (``listen``). ``libp2p``:
    TCP + Noise + yamux with Circuit Relay v2, for devices behind NAT (``libp2p_listen``,
    ``relays``). ``both``: either, UDP preferred where a peer offers it. The envelopes are the
    same on both; peers advertise the addresses of every carrier they speak."""
    libp2p_listen: list[str] = Field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    """libp2p addresses to listen on (``/ip4/HOST/tcp/PORT``); an empty list makes the node
    outbound-only, as behind NAT: it is reached through its ``relays``."""
    relay: Literal["off", "serve"] = "off"
    """``serve``: relay for other nodes of the network (Circuit Relay v2), within the
    ``relay_max_*`` limits. Needs a reachable ``libp2p_listen`` address."""
    relays: list[str] = Field(default_factory=list)
    """Relays to keep a reservation at (``/ip4/HOST/tcp/PORT/p2p/PEERID``); the node then
    advertises ``<relay>/p2p-circuit/p2p/<own PeerID>`` and peers dial it through them."""
    relay_max_reservations: int = Field(default=32, ge=1)
    relay_max_circuits: int = Field(default=64, ge=1)
    relay_max_circuit_s: int = Field(default=3600, ge=1)
    relay_max_circuit_mb: int = Field(default=256, ge=1)

    @model_validator(mode="after")
    def _addresses_match_transport(self) -> NetworkConfig:
        from flava_p2p.identity import IdentityError, parse_libp2p_multiaddr
        from flava_p2p.protocol.carriers import bootstrap_endpoints, carriers_of

        carriers = carriers_of(self.transport)
        try:
            bootstrap_endpoints(self.bootstrap, carriers)
        except FlavaError as exc:
            raise ValueError(str(exc).removeprefix("network.bootstrap: ")) from None
        if "libp2p" not in carriers and (self.relays or self.relay == "serve"):
            raise ValueError("relay and relays need network.transport: libp2p or both")
        if self.multicast_beacons and "udp" not in carriers:
            raise ValueError("multicast_beacons announce a UDP address: use transport udp or both")
        if self.relay == "serve" and not self.libp2p_listen:
            raise ValueError("relay: serve needs a libp2p_listen address others can reach")
        for text in self.relays:
            try:
                parse_libp2p_multiaddr(text)
            except IdentityError as exc:
                raise ValueError(f"relays: {exc}") from None
            if "/p2p-circuit" in text:
                raise ValueError(f"relays: {text!r} is itself relayed; give the relay's address")
        return self

    @field_validator("beacon_group")
    @classmethod
    def _group(cls, v: str) -> str:
        host, _, port = v.rpartition(":")
        try:
            ip = ipaddress.IPv4Address(host)
            port_n = int(port)
        except ValueError:
            raise ValueError("must be 'IPv4-group:port', e.g. 239.255.70.71:7947") from None
        if not ip.is_multicast or not 0 < port_n < 65536:
            raise ValueError("must be an IPv4 multicast group (224.0.0.0/4) and a port 1-65535")
        return v

    @field_validator("beacon_interface")
    @classmethod
    def _iface(cls, v: str) -> str:
        try:
            ipaddress.IPv4Address(v)
        except ValueError:
            raise ValueError("must be an IPv4 address, e.g. 0.0.0.0 or 127.0.0.1") from None
        return v


AggregationName = Literal[
    "mean", "trimmed_mean", "median", "krum", "multi_krum", "geometric_median", "clipped"
]
Compression = Literal["fp32", "fp16", "int8", "topk"]


class GossipConfig(_Strict):
    """Gossip-learning schedule and merging rule."""

    period_s: float = Field(default=10.0, gt=0)
    """Mean time between two gossip rounds of this node, seconds."""
    jitter: float = Field(default=0.2, ge=0, lt=1)
    """Each period is drawn uniformly in period·(1 ± jitter) so nodes do not synchronise."""
    fanout: int = Field(default=2, ge=1, le=64)
    """Peers that receive this node's delta each round."""
    view_size: int = Field(default=16, ge=2, le=1024)
    """Size of the peer-sampling view."""
    max_known_peers: int = Field(default=16_384, ge=16, le=1 << 20)
    """How many peers a node remembers, its view included: their keys, pairwise session
    keys, addresses and liveness records (~1.2 KB each). Shuffles keep introducing new peers,
    so without a bound this grows with the network. The least recently heard or mentioned
    are forgotten first, never view members, and are learned again from a later shuffle.
    Raised to at least 4 × ``view_size``."""
    aggregation: AggregationName = "clipped"
    """Merging rule; ``clipped`` is self-centred clipping (ClippedGossip), robust by default."""
    compression: Compression = "fp16"
    """Encoding of outgoing deltas."""
    shuffle_period_s: float = Field(default=5.0, gt=0)
    """Cyclon peer-exchange period."""
    shuffle_length: int = Field(default=4, ge=1, le=32)
    """Descriptors exchanged per shuffle."""
    ping_period_s: float = Field(default=2.0, gt=0)
    """Liveness probe period (one random peer per period)."""
    dead_after: int = Field(default=3, ge=1, le=100)
    """Consecutive missed probes before a peer is declared dead and leaves the view."""
    max_staleness: int = Field(default=8, ge=0)
    """Deltas more than this many rounds behind ours are dropped."""
    staleness_half_life: float = Field(default=4.0, gt=0)
    """A delta this many rounds old weighs half as much when merging."""
    max_norm_ratio: float | None = Field(default=3.0, gt=1)
    """Received models whose change since genesis is more than this many times the median
    change (own and this round's received models) are not merged and count against their
    sender: scaling / model-replacement attacks. null: off."""
    opposed_cosine: float | None = Field(default=-0.2, ge=-1, le=1)
    """Received models whose change since genesis points *against* ours (cosine below this)
    are not merged and count against their sender: sign-flip and inner-product-manipulation
    attackers send exactly such models, and clipping alone only bounds their pull. Honest
    models of the same task point the same way (random directions in thousands of dimensions
    have |cosine| ≈ 0). If our own model points against the sum of our own training updates
    (attackers dragged it), that sum is the reference. null: off (plain baselines)."""
    min_alignment: float | None = Field(default=0.1, gt=-1, lt=1)
    """Once honest models visibly agree (the median cosine of recently received models with
    ours is at least twice this), received models whose change since genesis has a cosine
    below this with ours are not merged and count against their sender. Noise (a Gaussian
    model) has cosine ≈ 0 with everything; honest models of one task point the same way.
    Before agreement (the first rounds, when every model is mostly DP noise) it waits.
    null: off."""
    max_reference_loss: float | None = Field(default=1.25, gt=1)
    """Where the node has a public reference set (clips no node trains on: a corpus's
    validation speakers in a simulation), received models whose loss on it is more than this
    many times the larger of our model's and the genesis model's are not merged and count
    against their sender. It judges what a model *does*, not how its weights look: noise and
    label-flipped models predict the reference clips worse than an untrained model, while an
    honest model that is merely behind is never worse than the genesis. Costs no privacy (no
    private clip is used). null: off."""
    anchor_steps: int = Field(default=10, ge=0, le=1000)
    """Public anchor: after every merge, this many full-batch SGD steps on the public
    reference clips (the same ones the reference screen scores on). They cost no privacy
    (public data, post-processing of the DP model) and keep pulling the model towards the
    right labels, which label flipping and coordinated (ALIE) shifts erode while staying
    within honest peers' spread on every screen. 0: off. Needs a reference set."""
    anchor_lr: float = Field(default=2.5, gt=0, le=10)
    """Learning rate of the anchor's steps. 10 steps at 2.5 gave the same accuracies as 50 at
    0.5 on FSDD (16 nodes: attack-free, label flip, mixed ALIE) for a fifth of the cost."""
    score_decay_per_s: float = Field(default=0.05, ge=0)
    """How fast a peer's negative score recovers (points per second). Penalties are 1–10
    points; a peer is graylisted at −20. Slower decay remembers misbehaviour across more
    rounds (a peer met rarely still accumulates evidence); 0 never forgives."""
    reputation_min_refused: int | None = Field(default=3, ge=1, le=1000)
    """Reputation memory: a peer is graylisted once this many of its models were refused by
    the screens as no honest model would be (norm bound, opposed, one-sided, worse than
    untrained on the reference clips) *and* they are at least ``reputation_refused_fraction``
    of its judged models. The evidence is kept across rounds (``reputation_half_life_s``),
    so an attacker that attacks only some rounds, or whose verdicts alternate, is still
    caught after a bounded number of encounters; each repeat offence doubles the graylist
    time. null: off (only the decaying score graylists)."""
    reputation_refused_fraction: float = Field(default=0.3, gt=0, le=1)
    """See ``reputation_min_refused``: the share of a peer's judged models that must have been
    refused. Honest peers with other speakers' data are refused rarely (the false-positive
    rate is reported by every simulation); an attacker active one round in three is caught."""
    reputation_half_life_s: float = Field(default=3600.0, gt=0)
    """How long reputation evidence counts: after this long, an old verdict weighs half."""
    max_peers_per_host: int | None = Field(default=2, ge=1, le=1024)
    """Sybil cap: at most this many peers of one host (IP address) in the view, and at most
    one model per host in each merge, however many identities the host holds. Loopback is
    exempt (a local test cluster). Devices behind one NAT share a public address and so share
    these slots. null: no cap."""
    trust_ramp_s: float = Field(default=0.0, ge=0)
    """Trust that grows with age: a peer's weight in merges starts at 10% when this node first
    hears from it and grows linearly to full over this many seconds, so identities minted a
    moment ago (or re-minted after a graylisting) cannot pull at full strength. 0: off (the
    default: at a network's start every peer is new, and mixing would slow for everyone)."""
    train_min_peers: int = Field(default=0, ge=0, le=1024)
    """Train only while at least this many peers are in the view. A node whose clips cover
    only some of the task's labels should not spend its privacy budget before it can merge:
    trained alone, its clips retire early and the peers that train later pull the shared
    model away from its labels. 0: always train."""
    max_one_sided: float | None = Field(default=0.65, gt=0.5, le=1)
    """Received models that lie on the same side of ours in more than this fraction of the
    coordinates that differ are not merged and count against their sender. An honest model
    differs from ours by training noise and other data: about half its coordinates are above
    ours, half below. "A little is enough" (ALIE) sends μ − z·σ, every coordinate shifted the
    same way: small enough to pass distance-based rules, but it pulls consistently every
    round, and clipping bounds each pull, not their sum. null: off (plain baselines)."""


#: The pre-merge screens switched off: what a plain (undefended) baseline sets.
SCREENS_OFF: dict[str, Any] = {
    "max_reference_loss": None,
    "opposed_cosine": None,
    "max_norm_ratio": None,
    "max_one_sided": None,
    "min_alignment": None,
    "anchor_steps": 0,
    "reputation_min_refused": None,
}


FeatureKind = Literal["speech_embedding", "logmel", "mfcc", "egemaps", "speech_embedding+egemaps"]

#: The clip window each front end reads when ``clip_seconds`` is not given: the pretrained
#: encoder sees 1.5 s (10 embeddings; short words centred, with context on both sides), the
#: learned-from-scratch models the classic 1 s Speech Commands clip.
DEFAULT_CLIP_SECONDS: dict[str, float] = {
    "speech_embedding": 1.5,
    "logmel": 1.0,
    "mfcc": 1.0,
    "egemaps": 3.0,
    "speech_embedding+egemaps": 3.0,
}

#: Which front ends each registered model reads. Checked when a config is loaded, so a
#: mismatch is a config error naming both fields, not a shape error deep in torch.
MODEL_FRONTENDS: dict[str, tuple[str, ...]] = {
    "embed_linear": ("speech_embedding", "egemaps", "speech_embedding+egemaps"),
    "embed_mlp": ("speech_embedding", "egemaps", "speech_embedding+egemaps"),
    "dscnn": ("logmel", "mfcc"),
    "aligned_linear": ("logmel", "mfcc"),
}

PoolingName = Literal["meanmax", "mean", "attention"]


class FeatureConfig(_Strict):
    """Acoustic front end; part of the model schema hash (peers must agree on it)."""

    kind: FeatureKind = "speech_embedding"
    """``speech_embedding``: Google's pretrained speech encoder (frozen, shipped in the package)
    turns each clip into 96-d window embeddings that the head models learn from. ``logmel`` /
    ``mfcc``: classic features for the models that learn their front end (dscnn,
    aligned_linear)."""
    sample_rate: int = Field(default=16000, ge=8000, le=48000)
    n_mels: int = Field(default=40, ge=8, le=128)
    n_mfcc: int = Field(default=20, ge=8, le=64)
    win_ms: float = Field(default=30.0, gt=0, le=100)
    hop_ms: float = Field(default=20.0, gt=0, le=100)
    clip_seconds: float = Field(default=1.0, gt=0, le=10)
    """Every clip is cut or padded to this length (default 1.5 s for speech_embedding, 1 s
    otherwise). The encoder needs at least 0.775 s."""

    @model_validator(mode="before")
    @classmethod
    def _default_clip(cls, data: Any) -> Any:
        if isinstance(data, dict) and "clip_seconds" not in data:
            kind = data.get("kind", "speech_embedding")
            if kind in DEFAULT_CLIP_SECONDS:
                data = {**data, "clip_seconds": DEFAULT_CLIP_SECONDS[kind]}
        return data

    @model_validator(mode="after")
    def _encoder_needs(self) -> FeatureConfig:
        if self.kind in ("speech_embedding", "speech_embedding+egemaps"):
            if self.sample_rate != 16000:
                raise ValueError(
                    "kind speech_embedding runs at sample_rate 16000 (clips at other rates are "
                    "resampled on load); remove sample_rate or set it to 16000"
                )
            if self.clip_seconds < 0.775:
                raise ValueError(
                    "kind speech_embedding needs clip_seconds >= 0.775 (its receptive field)"
                )
        return self


def check_model_frontend(model: str, kind: str, where: str = "model.name") -> None:
    """Raise ``ValueError`` when model ``model`` cannot read features of ``kind``."""
    wants = MODEL_FRONTENDS.get(model)
    if wants is None:
        raise ValueError(f"{where}: unknown model {model!r}; known: {', '.join(MODEL_FRONTENDS)}")
    if kind not in wants:
        users = [m for m, kinds in MODEL_FRONTENDS.items() if kind in kinds]
        raise ValueError(
            f"{where}: model {model!r} reads {' or '.join(wants)} features, but features.kind is "
            f"{kind!r}; set features.kind: {wants[0]}, or pick a model for {kind}: "
            f"{', '.join(users)}"
        )


def default_features(model: str) -> FeatureConfig:
    """The front end a model reads when the config does not say (its first listed kind)."""
    kinds = MODEL_FRONTENDS.get(model, ("speech_embedding",))
    return FeatureConfig.model_validate({"kind": kinds[0]})


class ModelConfig(_Strict):
    """Which registered keyword model to build."""

    name: str = "embed_linear"
    """``embed_linear`` (default): a linear head over the frozen speech encoder's pooled
    embeddings; ``embed_mlp``: a one-hidden-layer head instead. ``dscnn`` and
    ``aligned_linear`` learn from log-mel features (``features.kind: logmel``). See
    docs/benchmarks.md for how each does on real and synthetic speech, with and without DP."""
    width: int = Field(default=64, ge=8, le=512)
    """DS-CNN channels per layer, or the hidden width of ``embed_mlp``."""
    pooling: PoolingName = "meanmax"
    """How the embed_* heads pool the clip's window embeddings: ``meanmax`` (mean and max,
    concatenated), ``mean``, or ``attention`` (learned softmax weights over windows). Pooled
    features are L2-normalised per clip, which bounds every example's gradient."""

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in MODEL_FRONTENDS:
            raise ValueError(f"unknown model; known: {', '.join(MODEL_FRONTENDS)}")
        return v


class TrainingConfig(_Strict):
    """Local optimisation settings."""

    batch_size: int = Field(default=64, ge=1, le=4096)
    """Expected (Poisson) batch size under DP; fixed batch size otherwise."""
    lr: float = Field(default=0.5, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    """``cosine``: under DP the learning rate decays from ``lr`` to 0 over the planned
    lifetime (``privacy.planned_steps``), so late steps add little noise to a model that has
    mostly converged (post-processing: no privacy cost). Without DP it stays constant."""
    momentum: float = Field(default=0.9, ge=0, lt=1)
    local_steps: int = Field(default=10, ge=1)
    """DP-SGD steps per gossip round."""
    spec_augment: bool = False
    """SpecAugment masking (log-mel models only: embeddings are pooled per clip). Off by
    default: under DP it adds variance to an already noise-limited gradient."""
    augment_multiplicity: int = Field(default=1, ge=1, le=64)
    """K augmented copies (random time shift, plus SpecAugment when on) of every example per step;
    under DP their gradients are averaged *before* per-example clipping (De et al. 2022), so
    the privacy cost is unchanged and the clipped signal is less noisy. 1 = off."""
    threads: int = Field(default=1, ge=1, le=256)
    """torch intra-op threads used for training on this node."""


Accountant = Literal["rdp", "prv", "pld"]


class PrivacyConfig(_Strict):
    """Example-level differential privacy (DP-SGD) and optional message-level noise."""

    enabled: bool = True
    target_epsilon: float = Field(default=8.0, gt=0)
    """Total example-level ε budget over the node's planned lifetime."""
    delta: float = Field(default=1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    """Per-example gradient clipping bound C."""
    planned_steps: int = Field(default=2000, ge=1)
    """σ is chosen once so that ``planned_steps`` DP-SGD steps spend exactly the target ε."""
    accountant: Accountant = "pld"
    """How (ε, δ) is computed from the steps. ``rdp``: Rényi DP (fast, the loosest). ``pld``
    (the default):
    Google dp-accounting's privacy-loss distribution (pessimistic discretisation, so still an
    upper bound), about 9% less ε for the same noise, i.e. less noise for the same promise; it
    costs ~0.5 s per distinct step count and a few seconds to plan σ. ``prv``: Opacus' PRV
    accountant (as tight as ``pld``, slower)."""
    sample_rate: float | None = Field(default=None, gt=0, le=1)
    """Poisson rate q: the chance each clip joins each step's batch. null: batch_size / the
    number of clips when training first starts (as Opacus derives it). Nodes whose data grows
    (continuous learning) should set it: q and σ are fixed for the node's life, and the noised
    gradient sum is then divided by training.batch_size (a public constant), so pick
    q ≈ batch_size / the clips you expect to hold."""
    message_noise_multiplier: float | None = Field(default=None, gt=0)
    """z for optional message-level noise: each outgoing delta is clipped to ``message_clip``
    and gets N(0, z²C²); node-level (ε, δ) accounted separately over all releases. None: off."""
    message_clip: float = Field(default=5.0, gt=0)
    """C, the L2 bound on an outgoing delta when message noise is on."""

    @field_validator("target_epsilon")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number; set privacy.enabled: false for no DP")
        return v

    @model_validator(mode="before")
    @classmethod
    def _epsilon_shorthand(cls, data: Any) -> Any:
        """``epsilon: E`` means enabled with target E; ``epsilon: null`` means DP off."""
        if isinstance(data, dict) and "epsilon" in data:
            data = dict(data)
            eps = data.pop("epsilon")
            if eps is None:
                data["enabled"] = False
            else:
                data["enabled"] = True
                data["target_epsilon"] = eps
        return data

    @property
    def epsilon(self) -> float | None:
        """The target ε when DP is on, else None (the ``epsilon:`` shorthand, read back)."""
        return self.target_epsilon if self.enabled else None


class DataConfig(_Strict):
    """Where this node's own audio lives (never leaves the device)."""

    root: Path = Path("data")
    """Speech Commands layout: ``<root>/<label>/<speaker>_nohash_<n>.wav``."""
    cache_dir: Path | None = None
    """Feature cache (one SQLite file, keyed by clip content and front end, so a clip is
    encoded once); default ``<home>/cache``. Relative paths are relative to the node home."""
    eval_root: Path | None = None
    """Optional held-out clips (same layout) for the local validation accuracy in /status."""
    inbox: Path = Path("inbox")
    """A second folder of clips (same layout) that other parts of the node, or the owner's
    apps, write to; trained on like ``root``."""
    watch_period_s: float | None = Field(default=5.0, gt=0)
    """Rescan ``root`` and ``inbox`` this often: new clips join training, removed clips leave
    it, without a restart. null: load once at start."""
    reference: Path | None = None
    """Public clips (same layout, the task's labels) that the reference screen scores received
    models on (``gossip.max_reference_loss``); never trained on, costs no privacy. For example
    espeak-ng clips of the labels: `flava-sim dataset synth --words yes,no,… --out ref`.
    null: the reference screen is off on this node."""


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class ApiConfig(_Strict):
    """Local status/inference HTTP API (loopback by default; a token when bound elsewhere)."""

    host: str = "127.0.0.1"
    """Address the API binds. Anything but loopback needs ``token``: the API hands out the
    user's recognitions and takes their voice, so it is never open on a network."""
    token: str | None = Field(default=None, min_length=16)
    """Bearer token every request must carry (``Authorization: Bearer <token>``); required
    when ``host`` is not loopback, optional on loopback."""
    port: int = Field(default=8470, ge=0, le=65535)
    max_upload_bytes: int = Field(default=4 << 20, ge=1024, le=64 << 20)
    """Largest request body POST /v1/recognize accepts."""
    max_clip_seconds: float = Field(default=10.0, gt=0, le=120)
    """Longest clip POST /v1/recognize accepts."""
    resample: bool = True
    """Accept clips at rates other than 8 and 16 kHz by resampling them (false: refuse)."""
    feedback_max_clips: int = Field(default=2000, ge=1)
    """Recognised clips kept (in <home>/feedback) for the user to confirm or correct."""
    feedback_max_age_days: float = Field(default=30.0, gt=0)
    """Recognised clips older than this are forgotten (confirmed ones live on in the inbox)."""
    personalize: bool = True
    """Fit a private correction of the shared model on the user's labelled feedback clips
    (never gossiped) and recognise with it when cross-validation says it helps."""
    speaker_threshold: float = Field(default=0.8166, ge=-1.0, le=1.0)
    """Cosine score at or above which /v1/verify says "same speaker" (default: the equal-error
    point of a 5-clip enrolment on the public RAVDESS corpus)."""
    owner: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """Enrolled speaker whose voice alone may train this node: feedback clips that do not
    verify as ``owner`` are recorded but not queued for training (enrol first, via
    POST /v1/speakers/<owner>/enroll or `flava-node enroll`)."""

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ApiConfig:
        if self.host not in LOOPBACK_HOSTS and self.token is None:
            raise ValueError(
                f"api.host {self.host!r} is not loopback: set api.token (16+ characters) so "
                "only clients holding it can use the API, or bind 127.0.0.1."
            )
        return self


class NodeConfig(_Strict):
    """Everything ``flava-node`` reads from ``node.yaml``."""

    seed: int = Field(default=0, ge=0)
    task: Path | None = None
    """Task card (YAML) the node learns: labels, front end, head and DP bound shared by the
    whole network (see configs/tasks/). null: labels from the data folders, the rest from
    this file. Relative to the node home."""
    """Seed for every random choice of this node (jitter, peer sampling, DP noise)."""
    logging: LoggingConfig = LoggingConfig()
    identity: IdentityConfig = IdentityConfig()
    network: NetworkConfig = NetworkConfig()
    gossip: GossipConfig = GossipConfig()
    data: DataConfig = DataConfig()
    features: FeatureConfig = FeatureConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    api: ApiConfig = ApiConfig()

    @model_validator(mode="after")
    def _model_reads_features(self) -> NodeConfig:
        check_model_frontend(self.model.name, self.features.kind)
        return self


ModelT = TypeVar("ModelT", bound=BaseModel)


def load_config(path: str | Path, model: type[ModelT] = NodeConfig) -> ModelT:  # type: ignore[assignment]
    """Read a YAML file into ``model``, raising :class:`ConfigError` with a fixable message."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found. Create one with `flava-node init` "
            f"or copy an example from configs/."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc}).") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of `key: value` lines, "
            f"got a {type(data).__name__}."
        )
    return validate_config(data, model, source=str(path))


def validate_config(data: dict[str, Any], model: type[ModelT], source: str) -> ModelT:
    """Validate an already-parsed mapping, reporting errors as :class:`ConfigError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [_describe_error(err, model) for err in exc.errors()]
        noun = "problem" if len(lines) == 1 else "problems"
        body = "\n".join(f"  - {line}" for line in lines)
        raise ConfigError(f"{source}: {len(lines)} {noun}:\n{body}") from None


def _describe_error(err: Any, model: type[BaseModel]) -> str:
    """One human line for one pydantic error: field path, what was wrong, what is allowed."""
    loc = tuple(err.get("loc", ()))
    field = ".".join(str(p) for p in loc) or "(top level)"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        allowed = ", ".join(sorted(parent.model_fields)) if parent else "see configs/"
        return f"{field}: unknown key. Allowed keys here: {allowed}."
    got = err.get("input")
    # A whole-file check (loc empty) would echo the entire file back: its message says enough.
    got_text = "" if kind == "missing" or not loc else f" (got {got!r})"
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{field}: {msg}{got_text}."


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """Follow ``loc`` through nested config models; None when it leaves them."""
    current: type[BaseModel] = model
    for part in loc:
        info = current.model_fields.get(str(part))
        ann = info.annotation if info else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        current = ann
    return current
