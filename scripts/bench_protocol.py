#!/usr/bin/env python3
"""Protocol speed: simulated node-rounds per wall second, per engine and wire. Prints JSON.

Runs ``flava-sim run SCENARIO`` (default: simulations/protocol_10k.yaml, 10,000 nodes, real
Ed25519/X25519/XChaCha20-Poly1305 per datagram, no training) once per engine × wire × repeat,
each in its own process, and reports for each run:

- ``simulation_s``: the summary's ``wall_seconds`` (the run loop; the processes engine's first
  block is built before it starts, its children build in parallel);
- ``with_setup_s``: the same plus building the partitions (partitioned engines only);
- ``command_s``: the whole command, start-up and building included;
- ``node_rounds_per_s``: nodes × rounds ÷ ``simulation_s`` (and ÷ ``with_setup_s``);
- ``peak_rss_mb``: the largest process of the run (driver or a worker it reaped);
- ``metrics_sha256``: runs with the same wire must agree, whatever the engine.

    .venv/bin/python scripts/bench_protocol.py [--engines local,processes] [--wires real,fast]
        [--repeat 1] [--workers 2] [--scenario simulations/protocol_10k.yaml]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def one_run(scenario: Path, engine: str, wire: str, workers: int) -> dict[str, Any]:
    """Run the scenario once in a child process and read its summary."""
    with tempfile.TemporaryDirectory(prefix="bench-protocol-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "flava_p2p.cli.sim",
            "run",
            str(scenario),
            "--engine",
            engine,
            "--out",
            tmp,
            "--json",
            "--set",
            f"wire={wire}",
        ]
        if engine != "local":
            cmd += ["--workers", str(workers)]
        out_path, err_path = Path(tmp) / "stdout.json", Path(tmp) / "stderr.log"
        t0 = time.perf_counter()
        with out_path.open("w") as out, err_path.open("w") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT)
            # wait4: this child's own resource usage; its maxrss covers the workers it reaped.
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: Popen must know
        command_s = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = err_path.read_text("utf-8", "replace")[-2000:]
            raise SystemExit(f"bench_protocol: {' '.join(cmd)} failed:\n{tail}")
        peak_kb = usage.ru_maxrss
        summary = json.loads(out_path.read_text("utf-8"))
        digest = hashlib.sha256((Path(tmp) / "metrics.jsonl").read_bytes()).hexdigest()
    node_rounds = summary["nodes"] * summary["rounds"]
    simulation_s = summary["wall_seconds"]
    with_setup_s = summary.get("engine", {}).get("wall_seconds_with_setup", simulation_s)
    return {
        "engine": engine,
        "workers": workers if engine != "local" else 1,
        "wire": summary["wire"],
        "simulation_s": simulation_s,
        "with_setup_s": with_setup_s,
        "command_s": round(command_s, 2),
        "node_rounds": node_rounds,
        "node_rounds_per_s": round(node_rounds / simulation_s, 1),
        "node_rounds_per_s_with_setup": round(node_rounds / with_setup_s, 1),
        "datagrams_delivered": summary["final"]["delivered"],
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "metrics_sha256": digest,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", type=Path, default=ROOT / "simulations/protocol_10k.yaml")
    ap.add_argument("--engines", default="local,processes", help="comma-separated")
    ap.add_argument("--wires", default="real,fast", help="comma-separated: real, fast")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    sc = yaml.safe_load(args.scenario.read_text("utf-8"))
    runs = []
    for _ in range(args.repeat):
        for wire in args.wires.split(","):
            for engine in args.engines.split(","):
                print(f"bench_protocol: {engine} / {wire} …", file=sys.stderr, flush=True)
                runs.append(one_run(args.scenario, engine, wire, args.workers))
    same_bytes = {
        wire: len({r["metrics_sha256"] for r in runs if r["wire"].startswith(wire)}) == 1
        for wire in args.wires.split(",")
    }
    out = {
        "scenario": str(args.scenario),
        "nodes": sc.get("nodes"),
        "rounds": sc.get("rounds"),
        "cpus": os.cpu_count(),
        "runs": runs,
        "metrics_identical_per_wire": same_bytes,
        "target_node_rounds_per_s": 2700,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
