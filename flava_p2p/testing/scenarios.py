"""A small scenario builder for the simulator's tests (and quick experiments)."""

from __future__ import annotations

from typing import Any

from flava_p2p.config import validate_config
from flava_p2p.sim.scenario import Scenario


def small_scenario(**over: Any) -> Scenario:
    """12 synthetic-learner nodes for 8 fast rounds at ε = 8, with overrides (nested dicts
    merge one level deep)."""
    base: dict[str, Any] = {
        "name": "t",
        "nodes": 12,
        "rounds": 8,
        "gossip": {"period_s": 5.0, "shuffle_period_s": 2.5, "ping_period_s": 1.0},
        "learner": {"kind": "synthetic", "synthetic_samples": 64},
        "privacy": {"epsilon": 8.0},
        "metrics": {"plots": False},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return validate_config(base, Scenario, "test")
