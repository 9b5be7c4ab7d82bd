#!/usr/bin/env python3
"""How much of a protocol simulation is cryptography, and the speed it caps. Prints JSON.

Builds ``SCENARIO`` (default: simulations/protocol_10k.yaml), then runs it in this process with
every cryptographic call of the wire counted and timed: X25519 pair keys
(``crypto_box_beforenm``), Ed25519 signing and verification (HELLOs, intros' key bindings),
XChaCha20-Poly1305 seal/open (every other envelope) and BLAKE2b (nonces, the network MAC,
fragment MACs; for identity-work checks only the hasher's construction is timed). Building the
nodes (key generation) is not counted: it is not in the run's wall time either.

It reports, per primitive, the calls, the calls per node-round and the time measured around
each call (PyNaCl's own wrapper included), then:

- ``crypto_us_per_node_round``: the cryptography one node-round needs;
- ``crypto_only_node_rounds_per_s``: the rate one core would reach if nothing but the
  cryptography ran (the ceiling of any engine on one core);
- ``crypto_share``: the cryptography's share of this (instrumented) run's loop;
- ``core_budget_us_per_node_round``: the core time per node-round the target allows on this
  machine's cores, assuming perfect parallelism, and what is left of it for everything else.

The timers add a little to the run, so its wall time here is not the benchmark's: use
scripts/bench_protocol.py for that.

    .venv/bin/python scripts/bench_crypto_floor.py [--scenario simulations/protocol_10k.yaml]
        [--target 2700]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nacl.bindings

import flava_p2p.wire.endpoint as endpoint
import flava_p2p.wire.envelope as envelope
from flava_p2p.sim.runner import Simulation
from flava_p2p.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent


class Meter:
    """Calls and nanoseconds per primitive."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.ns: dict[str, int] = {}
        self.on = False

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, counted and timed while the meter is on."""
        self.calls[name] = 0
        self.ns[name] = 0
        clock = time.perf_counter_ns

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.on:
                return fn(*args, **kwargs)
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.ns[name] += clock() - t0
                self.calls[name] += 1

        return timed


@contextmanager
def metered(meter: Meter) -> Iterator[None]:
    """Route the wire's cryptographic calls through ``meter``; restore them on exit."""
    patches: list[tuple[Any, str, str]] = [
        (endpoint, "crypto_box_beforenm", "x25519_pair_key"),
        (nacl.bindings, "crypto_sign", "ed25519_sign"),
        (nacl.bindings, "crypto_sign_open", "ed25519_verify"),
        (envelope, "_aead_encrypt", "aead_seal"),
        (envelope, "_aead_decrypt", "aead_open"),
        (hashlib, "blake2b", "blake2b"),
    ]
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    try:
        for obj, attr, name in patches:
            setattr(obj, attr, meter.wrap(name, getattr(obj, attr)))
        yield
    finally:
        for obj, attr, original in saved:
            setattr(obj, attr, original)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", type=Path, default=ROOT / "simulations/protocol_10k.yaml")
    ap.add_argument("--target", type=float, default=2700.0, help="node-rounds/s to budget for")
    args = ap.parse_args()
    sc = load_scenario(args.scenario)
    if sc.wire != "real":
        raise SystemExit(f"{args.scenario}: wire is {sc.wire!r}; the floor needs wire: real")
    meter = Meter()
    with metered(meter):
        sim = Simulation(sc)  # built with the meter off: key generation is setup
        meter.on = True
        t0 = time.perf_counter()
        summary = sim.run(None)
        loop_s = time.perf_counter() - t0
        meter.on = False
    node_rounds = sc.nodes * sc.rounds
    primitives = {
        name: {
            "calls": meter.calls[name],
            "per_node_round": round(meter.calls[name] / node_rounds, 3),
            "us_per_call": round(meter.ns[name] / max(meter.calls[name], 1) / 1e3, 2),
            "seconds": round(meter.ns[name] / 1e9, 3),
        }
        for name in meter.calls
    }
    crypto_s = sum(meter.ns.values()) / 1e9
    crypto_us = crypto_s * 1e6 / node_rounds
    cores = os.cpu_count() or 1
    budget_us = cores * 1e6 / args.target
    out = {
        "scenario": str(args.scenario),
        "nodes": sc.nodes,
        "rounds": sc.rounds,
        "node_rounds": node_rounds,
        "datagrams_delivered": summary["final"]["delivered"],
        "primitives": primitives,
        "crypto_seconds": round(crypto_s, 2),
        "instrumented_loop_seconds": round(loop_s, 2),
        "crypto_share": round(crypto_s / loop_s, 3),
        "crypto_us_per_node_round": round(crypto_us, 1),
        "crypto_only_node_rounds_per_s": round(1e6 / crypto_us, 0),
        "target_node_rounds_per_s": args.target,
        "cores": cores,
        "core_budget_us_per_node_round": round(budget_us, 1),
        "left_for_the_rest_us_per_node_round": round(budget_us - crypto_us, 1),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
