"""Run N real `flava-node` processes on 127.0.0.1 over a speaker-partitioned corpus.

(The harness of the real-process tests and demos; ``scripts/local_cluster.py`` is its CLI.)

Each node gets its own home (identity, node.yaml) and a data folder holding only its speakers'
clips (symlinks), so no audio is shared; all evaluate on the same held-out speakers. Node 0 is
the bootstrap for everyone. Used by the integration test and scripts/byzantine_demo.py.

    .venv/bin/python scripts/local_cluster.py --corpus data/synth --nodes 4 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flava_p2p.speech.dataset import Utterance, scan_corpus
from flava_p2p.speech.partition import by_speaker

NODE = [sys.executable, "-m", "flava_p2p.cli.node"]


def prepare(
    corpus: Path,
    root: Path,
    n: int,
    *,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    reference_per_label: int = 0,
) -> list[Path]:
    """Create n node homes under ``root`` (speaker-partitioned corpus); returns their paths.

    With ``reference_per_label``, that many validation clips per label become every node's
    public reference set (``data.reference``) and are left out of the evaluation clips."""
    scan = scan_corpus(corpus)
    train = [u for u in scan.utterances if u.split == "train"]
    test = [u for u in scan.utterances if u.split != "train"]
    parts = by_speaker([u.speaker for u in train], n_parts=n, seed=seed)
    shares = [[train[j] for j in idx] for idx in parts]
    overrides = dict(overrides or {})
    if reference_per_label > 0:
        reference: list[Any] = []
        for label in scan.labels:
            reference += [u for u in test if u.split == "validation" and u.label == label][
                :reference_per_label
            ]
        chosen = {id(u) for u in reference}
        test = [u for u in test if id(u) not in chosen]
        _link(reference, root.resolve() / "reference", labels=scan.labels)
        data = {**overrides.get("data", {}), "reference": str(root.resolve() / "reference")}
        overrides["data"] = data
    return prepare_homes(shares, test, root, labels=scan.labels, seed=seed, overrides=overrides)


def prepare_homes(
    shares: list[list[Utterance]],
    held_out: list[Utterance],
    root: Path,
    *,
    labels: list[str],
    seed: int = 0,
    task: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[Path]:
    """One node home per share of clips (symlinked into its data folder, so no audio is
    copied); every node evaluates on ``held_out``. With ``task``, every node is initialised
    with that card (``flava-node init --task``)."""
    root = root.resolve()  # node configs resolve relative paths against their own home
    evaldir = root / "eval"
    _link(held_out, evaldir, labels=labels)
    homes = []
    for i, share in enumerate(shares):
        home = root / f"node{i}"
        init = [*NODE, "init", "--home", str(home), "--listen", "/ip4/127.0.0.1/udp/0"]
        init += ["--force", "--json"] + (["--task", str(task)] if task else [])
        subprocess.run(init, check=True, capture_output=True)
        _link(share, home / "data", labels=None if task else labels)
        cfg = yaml.safe_load((home / "node.yaml").read_text())
        cfg["seed"] = seed * 100 + i
        cfg["data"] = {"root": "data", "eval_root": str(evaldir), "cache_dir": None}
        cfg["api"] = {"host": "127.0.0.1", "port": 0}
        cfg["gossip"] = {
            "period_s": 2.0,
            "shuffle_period_s": 1.0,
            "ping_period_s": 0.5,
            "fanout": 2,
            "aggregation": "clipped",
        }
        cfg["model"] = {"name": "embed_linear"}
        cfg["training"] = {
            "batch_size": 64,
            "lr": 1.0,
            "local_steps": 8,
            "threads": 1,
            "spec_augment": False,
        }
        # A short demo lifetime: σ is planned for 400 steps at ε = 30 so a minute of training
        # shows learning; production nodes plan far longer lifetimes at smaller ε.
        cfg["privacy"] = {"enabled": True, "target_epsilon": 30.0, "planned_steps": 400}
        cfg["training"]["batch_size"] = 32
        for section, values in (overrides or {}).items():
            if isinstance(values, dict):
                cfg.setdefault(section, {}).update(values)
            else:
                cfg[section] = values
        (home / "node.yaml").write_text(yaml.safe_dump(cfg))
        homes.append(home)
    return homes


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``["privacy.target_epsilon=200", "gossip.period_s=4"]`` → nested overrides (YAML values)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, field_ = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set {pair!r}: expected SECTION.KEY=VALUE, e.g. gossip.period_s=4")
        out.setdefault(section, {})[field_] = yaml.safe_load(value)
    return out


def _link(utts: list[Any], dest: Path, labels: list[str] | None = None) -> None:
    for label in labels or []:
        (dest / label).mkdir(parents=True, exist_ok=True)
    for u in utts:
        target = dest / u.label / u.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(u.path.resolve())


@dataclass
class Cluster:
    """Handles to running node processes."""

    homes: list[Path]
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[int, Any] = field(default_factory=dict)

    def start(
        self, i: int, *, bootstrap: list[str] | None = None, attack: str | None = None
    ) -> None:
        """Launch node i (bootstrap: node 0's multiaddr unless given)."""
        if bootstrap is None:
            bootstrap = [] if i == 0 else self.multiaddrs(0)
        cmd = [
            *NODE,
            "--log-format",
            "json",
            "run",
            "--home",
            str(self.homes[i]),
            "--bootstrap",
            *bootstrap,
        ]
        if attack:
            cmd += ["--attack", attack]
        log = self.logs[i] = (self.homes[i] / "node.log").open("ab")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        (self.homes[i] / "status.json").unlink(missing_ok=True)
        self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)

    def start_all(self, attacks: dict[int, str] | None = None, timeout: float = 300.0) -> None:
        """Start node 0, then everyone else bootstrapping from it; wait until all serve /status."""
        attacks = attacks or {}
        self.start(0, attack=attacks.get(0))
        self.wait_ready(0, timeout)
        for i in range(1, len(self.homes)):
            self.start(i, attack=attacks.get(i))
        for i in range(len(self.homes)):
            self.wait_ready(i, timeout)

    def wait_ready(self, i: int, timeout: float = 120.0) -> dict[str, Any]:
        """Block until node i serves /status."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.procs[i].poll() is not None:
                raise RuntimeError(f"node {i} exited: {self.tail(i)}")
            try:
                return self.status(i)
            except (OSError, ValueError, KeyError):
                time.sleep(0.3)
        raise TimeoutError(f"node {i} not ready: {self.tail(i)}")

    def status(self, i: int) -> dict[str, Any]:
        """GET /status of node i."""
        info = json.loads((self.homes[i] / "status.json").read_text())
        with urllib.request.urlopen(info["api"] + "/status", timeout=5) as r:  # noqa: S310
            result: dict[str, Any] = json.loads(r.read())
            return result

    def multiaddrs(self, i: int) -> list[str]:
        """Addresses node i advertises."""
        return list(self.status(i)["addresses"])

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to node i and reap it."""
        proc = self.procs.pop(i)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        self.logs.pop(i).close()

    def stop_all(self) -> None:
        """SIGTERM everyone (graceful), SIGKILL stragglers."""
        for i in list(self.procs):
            self.procs[i].send_signal(signal.SIGTERM)
        for i in list(self.procs):
            try:
                self.procs[i].wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.procs[i].kill()
                self.procs[i].wait()
            del self.procs[i]
            self.logs.pop(i).close()

    def tail(self, i: int, n: int = 2000) -> str:
        """Last bytes of node i's log."""
        path = self.homes[i] / "node.log"
        return path.read_bytes()[-n:].decode(errors="replace") if path.exists() else ""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--root", default="runs/cluster")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a node.yaml setting on every node, e.g. --set privacy.target_epsilon=200",
    )
    args = parser.parse_args()
    homes = prepare(Path(args.corpus), Path(args.root), args.nodes, overrides=parse_sets(args.set))
    cluster = Cluster(homes)
    try:
        cluster.start_all()
        time.sleep(args.seconds)
        out = []
        for i in range(args.nodes):
            s = cluster.status(i)
            out.append(
                {
                    "node": i,
                    "round": s["round"],
                    "peers": len(s["peers"]),
                    "accuracy": s["accuracy"],
                    "epsilon": (s["privacy"]["example_level"] or {}).get("epsilon"),
                }
            )
        print(json.dumps(out, indent=1))
    finally:
        cluster.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
