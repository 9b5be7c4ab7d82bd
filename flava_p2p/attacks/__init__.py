"""Byzantine behaviours, shared by the simulator and real nodes (``flava-node run --attack``).

Model attacks are pure functions ``attack(ctx, params) -> model | None`` choosing what one
recipient is sent, given the attacker's honest model, the genesis model and the models it
received this round (the "omniscient" view ALIE/IPM assume, approximated by what it hears).
Data attacks (``label_flip``) change what the attacker trains on; network attacks (``replay``,
``garbage``, ``flood``) change what it puts on the wire and are run by the driver.

Spec strings: ``NAME`` or ``NAME:key=value,key=value`` (e.g. ``alie:z=1.5``, ``scaling:factor=10``).
Every model attack also takes ``every=K``: attack one round in K and behave honestly in the
others (an intermittent attacker, which a memoryless score forgives between attacks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt

from flava_p2p.errors import FlavaError

if TYPE_CHECKING:
    from flava_p2p.protocol.node import NodeCore

Vec = npt.NDArray[np.float32]


class AttackError(FlavaError):
    """An --attack spec is malformed; the message lists the valid names and parameters."""


@dataclass
class AttackContext:
    """What an attacking node knows when choosing what to send to ``recipient``."""

    own: Vec
    """The attacker's model after honest local training."""
    genesis: Vec
    received: list[Vec]
    """Models received from neighbours this round."""
    recipient: bytes
    recipient_model: Vec | None
    """The recipient's last model, if the attacker heard from it (dissensus uses it)."""
    rng: np.random.Generator
    n_honest: int = 8
    n_byzantine: int = 1


ModelAttack = Callable[[AttackContext, dict[str, float]], Vec | None]
MODEL_ATTACKS: dict[str, ModelAttack] = {}
DATA_ATTACKS = {"label_flip"}
NETWORK_ATTACKS = {"replay", "garbage", "flood"}
DEFAULTS: dict[str, dict[str, float]] = {}


F = TypeVar("F", bound=ModelAttack)


def _register(name: str, **defaults: float) -> Callable[[F], F]:
    def deco(fn: F) -> F:
        MODEL_ATTACKS[name] = fn
        DEFAULTS[name] = defaults
        return fn

    return deco


#: Seed of the colluders' shared sign pattern for ``alie:mixed=1`` (fixed: they coordinate).
_ALIE_PATTERN_SEED = 0xA11E


def _honest_stats(ctx: AttackContext) -> tuple[Vec, Vec]:
    pool = np.stack([*ctx.received, ctx.own]) if ctx.received else ctx.own[None, :]
    return pool.mean(axis=0), pool.std(axis=0)


@_register("sign_flip", scale=1.0)
def sign_flip(ctx: AttackContext, p: dict[str, float]) -> Vec:
    """Send the negated update: genesis − scale·(own − genesis)."""
    return ctx.genesis - p["scale"] * (ctx.own - ctx.genesis)


@_register("gaussian", sigma=1.0)
def gaussian(ctx: AttackContext, p: dict[str, float]) -> Vec:
    """Send pure noise around the genesis model."""
    noise = ctx.rng.normal(0.0, p["sigma"], ctx.own.shape).astype(np.float32)
    return ctx.genesis + noise


@_register("scaling", factor=10.0)
def scaling(ctx: AttackContext, p: dict[str, float]) -> Vec:
    """Model replacement: boost the update so it dominates an average."""
    return ctx.genesis + p["factor"] * (ctx.own - ctx.genesis)


@_register("alie", z=0.0, f=0.0, mixed=0.0)
def alie(ctx: AttackContext, p: dict[str, float]) -> Vec:
    """A Little Is Enough (Baruch et al. 2019): μ − z·σ per coordinate, z from n and f.

    ``z`` > 0 fixes z; otherwise it is the paper's z_max for n nodes of which f are Byzantine,
    with f from ``f`` (a real attacker knows its colluders; the node cannot) or the simulator.
    ``mixed=1`` is an adaptive variant aimed at the one-sidedness screen: each coordinate is
    shifted by z·σ in a fixed random direction (the same pattern every round and for every
    colluder, so the pulls still add up) instead of all downwards.
    """
    mu, sigma = _honest_stats(ctx)
    z = p["z"]
    if z <= 0:
        n = ctx.n_honest + ctx.n_byzantine
        f = min(int(p["f"]), n - 1) if p["f"] > 0 else ctx.n_byzantine
        s = n // 2 + 1 - f
        z = NormalDist().inv_cdf(min(0.999, max(0.5, (n - s) / n)))
    if p["mixed"]:
        signs = np.random.default_rng(_ALIE_PATTERN_SEED).integers(0, 2, mu.shape) * 2 - 1
        return mu - z * sigma * signs.astype(np.float32)
    return mu - z * sigma


@_register("ipm", epsilon=0.5)
def ipm(ctx: AttackContext, p: dict[str, float]) -> Vec:
    """Inner-product manipulation (Xie et al. 2020): −ε × the honest mean update."""
    mu, _ = _honest_stats(ctx)
    return ctx.genesis - p["epsilon"] * (mu - ctx.genesis)


@_register("free_rider")
def free_rider(ctx: AttackContext, p: dict[str, float]) -> Vec:
    """Contribute nothing: echo the mean of what it received (or genesis)."""
    return _honest_stats(ctx)[0] if ctx.received else ctx.genesis.copy()


@_register("dissensus", epsilon=1.0)
def dissensus(ctx: AttackContext, p: dict[str, float]) -> Vec:
    """Push each recipient away from consensus (He et al. 2022): x_r + ε·(x_r − μ)."""
    mu, _ = _honest_stats(ctx)
    target = ctx.recipient_model if ctx.recipient_model is not None else ctx.own
    return target + p["epsilon"] * (target - mu)


@_register("equivocation", scale=1.0)
def equivocation(ctx: AttackContext, p: dict[str, float]) -> Vec:
    """Different recipients get contradictory models: half honest, half sign-flipped."""
    if ctx.recipient[-1] % 2:
        return ctx.own
    return sign_flip(ctx, p)


@dataclass(frozen=True)
class AttackSpec:
    """A parsed ``--attack`` value."""

    name: str
    params: dict[str, float] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``model``, ``data`` or ``network``."""
        if self.name in MODEL_ATTACKS:
            return "model"
        return "data" if self.name in DATA_ATTACKS else "network"


def all_attack_names() -> list[str]:
    """Every attack accepted by ``--attack``."""
    return sorted([*MODEL_ATTACKS, *DATA_ATTACKS, *NETWORK_ATTACKS])


def parse_attack(spec: str) -> AttackSpec:
    """``name[:k=v,...]`` → :class:`AttackSpec`, with a clear error listing what is valid."""
    name, _, rest = spec.partition(":")
    name = name.strip().replace("-", "_")
    if name not in all_attack_names():
        raise AttackError(f"unknown attack {name!r}; choose from {', '.join(all_attack_names())}.")
    params = dict(DEFAULTS.get(name, {}))
    extra_ok = {
        "label_flip": {"fraction"},
        "flood": {"rate"},
        "garbage": {"rate"},
        "replay": {"rate"},
    }.get(name, {"every"} if name in MODEL_ATTACKS else set())
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or (key not in params and key not in extra_ok):
            allowed = sorted(set(params) | extra_ok) or ["(none)"]
            raise AttackError(
                f"attack {name}: bad parameter {item!r}; allowed: {', '.join(allowed)}."
            )
        try:
            params[key] = float(value)
        except ValueError:
            raise AttackError(f"attack {name}: {key} must be a number, got {value!r}.") from None
    return AttackSpec(name, params)


def apply_model_attack(spec: AttackSpec, ctx: AttackContext) -> Vec | None:
    """What the attacker sends to ``ctx.recipient`` under ``spec``."""
    out = MODEL_ATTACKS[spec.name](ctx, spec.params)
    return None if out is None else np.asarray(out, dtype=np.float32)


def make_attack_hook(
    spec: AttackSpec, rng: np.random.Generator, n_byzantine: int = 1, n_honest: int | None = None
) -> Callable[[NodeCore, bytes, Vec], Vec | None]:
    """A :attr:`NodeCore.outgoing_hook` that replaces what the node sends with ``spec``'s choice.

    The attacker trains honestly; what it *sends* is decided per recipient from its own model,
    the genesis model and what it heard last round. ``n_honest`` defaults to what a real node
    can see: its view plus itself, minus the ``n_byzantine`` it is told about.
    """

    every = max(1, int(spec.params.get("every", 1)))

    def hook(core: NodeCore, peer: bytes, model: Vec) -> Vec | None:
        if core.round % every:  # an intermittent attacker: honest in the other rounds
            return model
        ctx = AttackContext(
            own=model,
            genesis=core.genesis,
            received=list(core.last_inputs.values()),
            recipient=peer,
            recipient_model=core.last_inputs.get(peer),
            rng=rng,
            n_honest=(
                n_honest if n_honest is not None else max(1, len(core.view) + 1 - n_byzantine)
            ),
            n_byzantine=n_byzantine,
        )
        return apply_model_attack(spec, ctx)

    return hook


def flip_labels(labels: npt.NDArray[np.int64], n_classes: int) -> npt.NDArray[np.int64]:
    """label_flip: y → (n_classes − 1 − y), the classic targeted-poisoning transform."""
    return (n_classes - 1 - labels).astype(np.int64)
