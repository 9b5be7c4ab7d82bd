#!/usr/bin/env python3
"""Flood a running node with garbage datagrams at full speed; measure what it costs. JSON out.

Two real nodes on 127.0.0.1; a separate process sends random datagrams (1–1200 B) to node 1
as fast as it can for ``--seconds``. Meanwhile the script polls node 1's /status every 50 ms.
Reports /status latency (p50/p99), node 1's RSS growth, datagrams sent by the flooder, and
whether the flooder's address was graylisted.

    .venv/bin/python scripts/flood_test.py --corpus data/synth --seconds 30
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from flava_p2p.testing.cluster import Cluster, prepare


def flood(port: int, seconds: float, result: mp.Queue) -> None:  # type: ignore[type-arg]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    result.put(sock.getsockname()[1])
    rnd = os.urandom(1 << 16)
    sent, i, end = 0, 0, time.time() + seconds
    while time.time() < end:
        for _ in range(200):
            n = 1 + (i * 7919) % 1200
            off = (i * 104729) % (len(rnd) - n)
            try:
                sock.sendto(rnd[off : off + n], ("127.0.0.1", port))
                sent += 1
            except OSError:
                pass
            i += 1
    result.put(sent)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def poll(api: str, pid: int, seconds: float) -> tuple[list[float], float, dict[str, Any]]:
    """GET /status every 50 ms for ``seconds``: sorted latencies (ms), peak RSS, last answer."""
    latencies, rss_peak, last = [], 0.0, {}
    end = time.time() + seconds
    while time.time() < end:
        t = time.perf_counter()
        with urllib.request.urlopen(api, timeout=10) as r:  # noqa: S310
            last = json.loads(r.read())
        latencies.append((time.perf_counter() - t) * 1000)
        rss_peak = max(rss_peak, rss_mb(pid))
        time.sleep(0.05)
    return sorted(latencies), rss_peak, last


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--seconds", type=float, default=30, help="flood duration")
    parser.add_argument("--settle", type=float, default=20, help="seconds before measuring")
    parser.add_argument("--control", type=float, default=10, help="seconds polled without flood")
    parser.add_argument("--root", default="runs/flood")
    args = parser.parse_args()
    cluster = Cluster(prepare(Path(args.corpus), Path(args.root), 2))
    try:
        cluster.start(0)
        cluster.wait_ready(0)
        cluster.start(1)
        status = cluster.wait_ready(1)
        pid = cluster.procs[1].pid
        port = int(status["addresses"][0].split("/udp/")[1].split("/")[0])
        api = json.loads((cluster.homes[1] / "status.json").read_text())["api"] + "/status"
        # Settle (discovery, first training rounds: torch and Opacus allocate their working
        # memory then), then a control phase without flood, then the flood.
        time.sleep(args.settle)
        rss_control = rss_mb(pid)
        control, rss_control_peak, _ = poll(api, pid, args.control)
        rss_before = rss_mb(pid)
        q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        flooder = mp.Process(target=flood, args=(port, args.seconds, q))
        flooder.start()
        flood_port = q.get()
        latencies, rss_peak, last = poll(api, pid, args.seconds)
        sent = q.get()
        flooder.join()
        graylisted = f"addr:127.0.0.1:{flood_port}" in last["graylisted_addresses"]
        result = {
            "seconds": args.seconds,
            "flood_datagrams_sent": sent,
            "flood_rate_per_s": round(sent / args.seconds),
            "status_requests": len(latencies),
            "status_p50_ms": round(statistics.median(latencies), 2),
            "status_p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 2),
            "control_status_p50_ms": round(statistics.median(control), 2),
            "control_status_p99_ms": round(control[int(0.99 * (len(control) - 1))], 2),
            "kernel_filtered_addresses": last["counters"].get("kernel_filtered_addresses", 0),
            "rss_before_mb": round(rss_before, 1),
            "rss_peak_mb": round(rss_peak, 1),
            "rss_growth_mb": round(rss_peak - rss_before, 1),
            "control_rss_growth_mb": round(rss_control_peak - rss_control, 1),
            "flooder_graylisted": graylisted,
            "overload_dropped": last["counters"].get("overload_dropped", 0),
            "dropped_graylisted_addr": last["counters"].get("dropped_graylisted_addr", 0),
            "node_still_gossiping": last["round"] > status["round"],
        }
        print(json.dumps(result, indent=1))
        ok = result["status_p99_ms"] < 100 and result["rss_growth_mb"] < 50 and graylisted
        return 0 if ok else 1
    finally:
        cluster.stop_all()


if __name__ == "__main__":
    sys.exit(main())
