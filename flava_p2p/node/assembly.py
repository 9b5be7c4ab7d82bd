"""The one place a node's protocol core is put together — for the real node and the simulator.

``protocol/`` (the sans-I/O brain) and ``learning/`` (data, models, DP) do not know each other;
this module joins them. The asyncio driver (``runtime/driver.py``) and the simulator
(``sim/runner.py``) both describe a node as a :class:`CoreSpec` — its network settings, gossip
settings, privacy settings, identity and model — and call :func:`assemble_core`; a restarted
node is brought back by :func:`resume_core` from the same :class:`Resume` record in both. So
whatever a real node does (message-level noise, LAN beacons, the network key, attacks), a
simulated node does too, and a test checks that both assemble identical cores.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flava_p2p.attacks import AttackSpec, make_attack_hook
from flava_p2p.config import GossipConfig, NetworkConfig, NodeConfig, PrivacyConfig
from flava_p2p.identity import Identity
from flava_p2p.learning.message_noise import MessageNoise
from flava_p2p.protocol.carriers import bootstrap_endpoints, carriers_of
from flava_p2p.protocol.node import Addr, NodeCore, Vec
from flava_p2p.protocol.sybil import SybilGuard
from flava_p2p.runtime.multicast import parse_group
from flava_p2p.wire.endpoint import WireEndpoint
from flava_p2p.wire.messages import DpInfo, PeerDescriptor


@dataclass(frozen=True)
class ModelIdentity:
    """What peers must share to merge: the genesis weights and the model schema."""

    genesis: Vec
    schema: bytes
    card: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CoreSpec:
    """Everything a node's core is made of, whoever drives it."""

    identity: Identity
    network: NetworkConfig
    gossip: GossipConfig
    privacy: PrivacyConfig
    model: ModelIdentity
    advertised: list[str]
    bootstrap: list[Addr]
    network_key: bytes | None = None
    rng_seed: str = ""
    """Seeds the core's own RNG (jitter, peer choice); the node's config seed and PeerID."""
    own_work: bytes = b""
    """Our identity-work nonce for ``network.identity_work_bits``."""


@dataclass
class Resume:
    """What a restarted node brings back: learning state and the peers it knew."""

    model: Vec
    round: int = 0
    sample_count: int = 0
    dp: DpInfo = field(default_factory=lambda: DpInfo(None, None))
    view: list[PeerDescriptor] = field(default_factory=list)
    message_releases: int = 0
    screen: dict[str, Any] | None = None
    """``NodeCore.screen_state()`` saved after the last merge (None: start fresh)."""


def core_spec(
    cfg: NodeConfig,
    identity: Identity,
    model: ModelIdentity,
    *,
    advertised: list[str],
    network_key: bytes | None,
    rng_seed: str,
    own_work: bytes = b"",
) -> CoreSpec:
    """A node's :class:`CoreSpec` from its ``node.yaml`` settings (real and simulated alike)."""
    return CoreSpec(
        identity=identity,
        network=cfg.network,
        gossip=cfg.gossip,
        privacy=cfg.privacy,
        model=model,
        advertised=advertised,
        bootstrap=bootstrap_endpoints(cfg.network.bootstrap, carriers_of(cfg.network.transport)),
        network_key=network_key,
        rng_seed=rng_seed,
        own_work=own_work,
    )


def assemble_core(
    spec: CoreSpec,
    *,
    first_seq: int,
    noise_rng: np.random.Generator,
    resume: Resume | None = None,
    endpoint: type[WireEndpoint] = WireEndpoint,
) -> NodeCore:
    """Build the node's core: wire endpoint, message noise, beacons, then resume it.

    ``noise_rng`` draws message-level noise: OS entropy on a real node (a seed an attacker
    could learn would void the guarantee), seeded in a simulation (for reproducibility).
    ``endpoint`` is the wire class: the simulator's ``wire: fast`` passes its unsealed one.
    """
    net = spec.network
    wire = endpoint(
        spec.identity,
        net.network_id,
        network_key=spec.network_key,
        mtu=net.mtu,
        first_seq=first_seq,
    )
    noise = None
    if spec.privacy.message_noise_multiplier is not None:
        noise = MessageNoise(
            spec.privacy.message_clip,
            spec.privacy.message_noise_multiplier,
            spec.privacy.delta,
            resume.message_releases if resume is not None else 0,
        )
    core = NodeCore(
        spec.identity,
        network_id=net.network_id,
        genesis=spec.model.genesis,
        schema=spec.model.schema,
        schema_card=spec.model.card,
        gossip=spec.gossip,
        rng=random.Random(spec.rng_seed),
        advertised=list(spec.advertised),
        bootstrap=list(spec.bootstrap),
        wire=wire,
        message_noise=noise,
        noise_rng=noise_rng,
        beacon=(
            (parse_group(net.beacon_group), net.beacon_period_s) if net.multicast_beacons else None
        ),
        sybil=SybilGuard(
            net.network_id, net.identity_work_bits, spec.own_work, spec.gossip.max_peers_per_host
        ),
    )
    core.carriers = carriers_of(net.transport)  # before the view is restored: it picks addresses
    if resume is not None:
        resume_core(core, resume)
    return core


def resume_core(core: NodeCore, resume: Resume) -> None:
    """Load a restarted node's model, round, progress and view into a fresh core."""
    core.model = np.asarray(resume.model, dtype=np.float32).copy()
    core.round = resume.round
    core.sample_count = resume.sample_count
    core.dp = resume.dp
    core.restore_view(list(resume.view))
    if resume.screen is not None:
        try:
            core.load_screen_state(resume.screen)
        except (ValueError, KeyError, TypeError):
            # Another model (a new task card) or a damaged entry: screening starts afresh,
            # which is what a new node does; counted so the operator can see it happened.
            core.counters["screen_state_discarded"] = 1


def snapshot(core: NodeCore) -> Resume:
    """The :class:`Resume` record of a running core (what a checkpoint would hold)."""
    mn = core.message_noise
    return Resume(
        model=core.model.copy(),
        round=core.round,
        sample_count=core.sample_count,
        dp=core.dp,
        view=core.view_descriptors(),
        message_releases=mn.releases if mn is not None else 0,
        screen=core.screen_state(),
    )


def attach_attack(
    core: NodeCore,
    attack: AttackSpec | None,
    rng: np.random.Generator,
    *,
    n_byzantine: int = 1,
    n_honest: int = 1,
) -> None:
    """Make the core a Byzantine peer for a model attack (other attack kinds act elsewhere:
    label flipping in the data, network attacks in the driver's or simulator's transport)."""
    if attack is not None and attack.kind == "model":
        core.outgoing_hook = make_attack_hook(
            attack, rng, n_byzantine=n_byzantine, n_honest=n_honest
        )
