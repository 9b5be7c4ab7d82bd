"""flava-sim: scenarios, network model, topologies, faults, learners, determinism, reports."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flava_p2p.config import SCREENS_OFF, ConfigError, validate_config
from flava_p2p.errors import FlavaError
from flava_p2p.sim.network_conditions import SimLinks, churn_schedule
from flava_p2p.sim.runner import Simulation, run_scenario
from flava_p2p.sim.scenario import Churn, Dist, NetworkModel, Scenario
from flava_p2p.testing.scenarios import small_scenario

scenario = small_scenario


FULL = {
    "byzantine": {"count": 2, "attack": "alie"},
    "faults": {"count": 1, "rate": 3.0},
    "network": {
        "loss": 0.05,
        "burst": {"p_good_to_bad": 0.05, "p_bad_to_good": 0.3, "loss_in_bad": 0.6},
        "duplicate": 0.02,
        "reorder": 0.05,
        "partitions": [{"at": 10, "heal": 20, "fraction": 0.5}],
        "churn": {"fraction": 0.3, "session": {"dist": "exponential", "mean": 15}},
    },
}


class TestDeterminism:
    def test_fast_wire_changes_only_bytes(self) -> None:
        """``wire: fast`` skips signatures and encryption and nothing else: the same
        datagrams, of the same sizes, are delivered and the same models learned."""
        real = Simulation(scenario(nodes=8, rounds=4)).run()
        fast = Simulation(scenario(nodes=8, rounds=4, wire="fast")).run()
        assert real["wire"] == "real" and fast["wire"].startswith("fast (unsealed")
        keep = (
            "delivered",
            "dropped",
            "honest_mean_acc",
            "consensus_distance",
            "rejections",
            "bytes_sent",
        )
        assert {k: fast["final"][k] for k in keep} == {k: real["final"][k] for k in keep}
        assert real["final"]["bytes_sent"] > 0

    @pytest.mark.slow  # subprocesses / long run: `scripts/test.sh --slow`
    def test_same_seed_gives_byte_identical_metrics(self, tmp_path: Path) -> None:
        """Everything on: loss, bursts, duplication, reordering, partition, churn, faults."""
        sc = scenario(**FULL)
        run_scenario(sc, tmp_path / "a", seed=5)
        run_scenario(sc, tmp_path / "b", seed=5)
        run_scenario(sc, tmp_path / "c", seed=6)
        a = (tmp_path / "a" / "metrics.jsonl").read_bytes()
        assert a == (tmp_path / "b" / "metrics.jsonl").read_bytes()
        assert a != (tmp_path / "c" / "metrics.jsonl").read_bytes()
        assert len(a.splitlines()) == sc.rounds

    @pytest.mark.parametrize("model", ["embed_linear", "embed_mlp", "dscnn", "aligned_linear"])
    def test_real_learner_is_reproducible(
        self, tiny_corpus: Path, tmp_path: Path, model: str
    ) -> None:
        """The DP-SGD keyword model path is bit-reproducible too (seeded noise), for each model."""
        kind = "speech_embedding" if model.startswith("embed_") else "logmel"
        sc = scenario(
            nodes=3,
            rounds=3,
            learner={"kind": "real", "model": model, "width": 8, "threads": 1},
            data={
                "corpus": str(tiny_corpus),
                "partition": "iid",
                "cache_dir": None,
                "features": {"kind": kind},
            },
        )
        s1 = run_scenario(sc, tmp_path / "a", seed=1)
        run_scenario(sc, tmp_path / "b", seed=1)
        a = (tmp_path / "a" / "metrics.jsonl").read_bytes()
        assert a == (tmp_path / "b" / "metrics.jsonl").read_bytes()
        assert 0 < s1["privacy"]["epsilon_max"] <= 8.0 + 1e-6
        assert s1["final"]["honest_mean_acc"] is not None
        assert s1["model"] == model

    def test_parallel_workers_change_nothing(self, tiny_corpus: Path, tmp_path: Path) -> None:
        """Training in 2 worker processes gives the same bytes as training in-process."""
        common = {
            "nodes": 4,
            "rounds": 3,
            "data": {"corpus": str(tiny_corpus), "partition": "iid", "cache_dir": None},
        }
        # batched: false keeps the per-node trainers (the path worker processes run)
        learner = {
            "kind": "real",
            "width": 8,
            "threads": 1,
            "train_seconds": 1.0,
            "batched": False,
        }
        run_scenario(scenario(**common, learner={**learner, "workers": 1}), tmp_path / "a")
        run_scenario(scenario(**common, learner={**learner, "workers": 2}), tmp_path / "b")
        a = (tmp_path / "a" / "metrics.jsonl").read_bytes()
        assert a == (tmp_path / "b" / "metrics.jsonl").read_bytes()

    def test_clips_arrive_over_time_and_retire(self, tiny_corpus: Path, tmp_path: Path) -> None:
        """Clips arriving by schedule: the clips present grow, clips retire once their budget
        is spent, no clip's ε passes the bound, each node holds only its label subset, and
        two worker processes give the same bytes as one."""
        common = {
            "nodes": 3,
            "rounds": 8,
            "data": {
                "corpus": str(tiny_corpus),
                "partition": "iid",
                "cache_dir": None,
                "label_fraction": 0.5,
                "arrival": {"initial": 0.5, "schedule": [[15, 0.75], [25, 1.0]]},
            },
            "privacy": {"epsilon": 4.0, "planned_steps": 30, "sample_rate": 0.3},
            "metrics": {"plots": True},
        }
        learner = {"kind": "real", "threads": 1, "train_seconds": 1.0}
        sc = scenario(**common, learner={**learner, "workers": 1})
        summary = run_scenario(sc, tmp_path / "a")
        recs = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
        present = [r["data"]["clips_present"] for r in recs]
        assert present == sorted(present) and present[0] < present[-1]
        assert present[-1] == recs[-1]["data"]["clips_total"]
        assert recs[0]["data"]["clips_retired"] == 0 < recs[-1]["data"]["clips_retired"]
        assert all((r["epsilon_max"] or 0) <= 4.0 for r in recs)
        assert summary["data"]["clips_retired"] == recs[-1]["data"]["clips_retired"]
        assert (tmp_path / "a" / "arrival.png").stat().st_size > 0
        run_scenario(scenario(**common, learner={**learner, "workers": 2}), tmp_path / "b")
        assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == (
            tmp_path / "b" / "metrics.jsonl"
        ).read_bytes()

    def test_label_subsets_hold_only_some_labels(self, tiny_corpus: Path) -> None:
        """label_fraction 0.5: every node's clips cover half of the labels (seeded)."""
        from flava_p2p.sim.real_learners import RealLearners

        sc = scenario(
            nodes=3,
            rounds=1,
            data={
                "corpus": str(tiny_corpus),
                "partition": "iid",
                "cache_dir": None,
                "label_fraction": 0.5,
            },
            learner={"kind": "real", "threads": 1},
        )
        learners = RealLearners(sc, seed=0)
        n = learners.n_classes
        for t in learners.trainers.values():
            held = set(t._y.tolist())
            assert 1 <= len(held) <= max(1, round(n / 2))


class TestNetworkModel:
    def test_partition_cuts_then_heals(self) -> None:
        model = NetworkModel.model_validate(
            {"partitions": [{"at": 5, "heal": 9, "groups": [[0, 1]]}]}
        )
        links = SimLinks.build(model, 4, seed=0)
        rng = random.Random(0)
        assert links.transmit(0, 2, 100, 4.9, rng)
        assert links.transmit(0, 2, 100, 5.0, rng) == []
        assert links.transmit(0, 1, 100, 6.0, rng)  # same side
        assert links.transmit(2, 3, 100, 6.0, rng)  # the unlisted nodes form one group
        assert links.transmit(0, 2, 100, 9.0, rng)

    def test_bursty_loss_rate_and_burst_length(self) -> None:
        """Gilbert–Elliott with loss 1 in the bad state: stationary loss p/(p+r), bursts ~1/r."""
        model = NetworkModel.model_validate(
            {"burst": {"p_good_to_bad": 0.1, "p_bad_to_good": 0.3, "loss_in_bad": 1.0}}
        )
        links = SimLinks.build(model, 2, seed=0)
        rng = random.Random(1)
        lost = [not links.transmit(0, 1, 100, 0.0, rng) for _ in range(40_000)]
        assert abs(np.mean(lost) - 0.25) < 0.02
        runs, current = [], 0
        for x in lost:
            if x:
                current += 1
            elif current:
                runs.append(current)
                current = 0
        assert abs(np.mean(runs) - 1 / 0.3) < 0.3

    def test_bandwidth_queues_datagrams(self) -> None:
        model = NetworkModel.model_validate(
            {"bandwidth_bps": 8000, "latency": {"dist": "constant", "mean": 0.01}}
        )
        links = SimLinks.build(model, 2, seed=0)
        rng = random.Random(0)
        first = links.transmit(0, 1, 1000, 0.0, rng)[0]  # 1 s on the wire + 10 ms
        second = links.transmit(0, 1, 1000, 0.0, rng)[0]  # waits for the first
        assert first == pytest.approx(1.01) and second == pytest.approx(2.01)

    def test_churn_schedule_alternates_and_reproduces(self) -> None:
        churn = Churn(fraction=0.5, session=Dist(dist="exponential", mean=10))
        a = churn_schedule(churn, list(range(10)), 200.0, seed=3)
        assert a == churn_schedule(churn, list(range(10)), 200.0, seed=3)
        assert len({i for _, i, _ in a}) == 5
        for node in {i for _, i, _ in a}:
            states = [up for _, i, up in a if i == node]
            assert states[0] is False and all(x != y for x, y in itertools.pairwise(states))

    def test_churn_trace_file(self, tmp_path: Path) -> None:
        trace = tmp_path / "trace.csv"
        trace.write_text("node,down_at,up_at\n2,5,9\n3,7,\n")
        churn = Churn(trace=str(trace))
        assert churn_schedule(churn, [0, 1, 2, 3], 100, 0) == [
            (5.0, 2, False),
            (7.0, 3, False),
            (9.0, 2, True),
        ]
        trace.write_text("2,nine,9\n")
        with pytest.raises(FlavaError, match="line 1"):
            churn_schedule(churn, [0, 1, 2, 3], 100, 0)


class TestTopologies:
    def test_ring_talks_only_to_neighbours(self) -> None:
        sim = Simulation(scenario(nodes=8, topology={"kind": "ring"}), seed=0)
        sim.run()
        for i, core in enumerate(sim.net.nodes):
            expected = {sim.identities[(i - 1) % 8].peer_id, sim.identities[(i + 1) % 8].peer_id}
            assert set(core.view.peers()) == expected

    def test_discovered_finds_everyone_from_one_bootstrap(self) -> None:
        sim = Simulation(scenario(nodes=10, topology={"kind": "discovered"}), seed=0)
        sim.run()
        known = [len(core.view) for core in sim.net.nodes]
        assert min(known) >= 5  # view_size 16 > 9 peers: sampling spread most of the network
        assert all(core.counters.get("deltas_received", 0) > 0 for core in sim.net.nodes)

    @pytest.mark.parametrize(
        "topo",
        [
            {"kind": "regular", "degree": 3},
            {"kind": "erdos_renyi", "p": 0.4},
            {"kind": "watts_strogatz", "degree": 4, "p": 0.3},
            {"kind": "barabasi_albert", "m": 2},
            {"kind": "complete"},
        ],
    )
    def test_static_graphs_learn(self, topo: dict[str, Any]) -> None:
        s = run_scenario(scenario(nodes=10, topology=topo, privacy={"epsilon": None}))
        assert s["final"]["honest_mean_acc"] > 0.6  # 10 classes: chance is 0.1

    def test_known_peers_stay_bounded_and_the_network_keeps_learning(self) -> None:
        """Shuffles keep introducing peers; past ``gossip.max_known_peers`` a node forgets the
        least recently heard (never its view) and what it kept on them, and still learns."""
        topo = {"kind": "dynamic", "known_peers": 4}  # the view: 4 peers
        over = {"gossip": {"max_known_peers": 16}, "privacy": {"epsilon": None}}
        sim = Simulation(scenario(nodes=80, rounds=12, topology=topo, **over))
        summary = sim.run()
        assert summary["final"]["honest_mean_acc"] > 0.6
        forgot = 0
        for core in sim.net.nodes:
            assert len(core.wire._peers) <= 16
            assert all(core.wire.knows(p) for p in core.view.peers())  # the view is sendable
            # Pruned when the address book reaches twice the bound (plus one shuffle's worth).
            assert len(core._addr_of) <= 2 * 16 + 8 and len(core._announced) <= 2 * 16 + 8
            forgot += core.counters.get("strangers_forgotten", 0)
        assert forgot > 0
        unbounded = Simulation(scenario(nodes=80, rounds=12, topology=topo))
        unbounded.run()
        assert max(len(c._addr_of) for c in unbounded.net.nodes) > 2 * 16 + 8  # it would grow

    def test_dynamic_views_start_from_each_nodes_seeded_draw(self) -> None:
        """Each node's first view is its own seeded draw of ``known_peers`` others (the same
        draw in any partition), and no graph is built for it: a complete graph of 10,000 nodes
        cost 94 s and ~6 GB per process for nothing."""
        n, known = 40, 6
        sim = Simulation(scenario(nodes=n, topology={"kind": "dynamic", "known_peers": known}))
        assert sim.neighbours == []
        for i, core in enumerate(sim.net.nodes):
            others = [j for j in range(n) if j != i]
            drawn = random.Random(f"{sim.seed}/view/{i}").sample(others, known)
            assert set(core.view.peers()) == {sim.identities[j].peer_id for j in drawn}

    def test_impossible_regular_graph_is_a_clear_error(self) -> None:
        with pytest.raises(FlavaError, match="degree"):
            Simulation(scenario(nodes=5, topology={"kind": "regular", "degree": 3}))


class TestFaults:
    def test_protocol_faults_are_rejected_and_counted(self) -> None:
        s = run_scenario(scenario(faults={"count": 2, "rate": 5.0}))
        rej = s["final"]["rejections"]
        sent = s["faults_sent"]
        assert sent["forged"] > 10 and sent["replay"] > 10 and sent["malformed"] > 10
        # a forged PING fails its AEAD tag, or finds its claimed sender unknown to the target
        forged_refused = rej.get("bad_auth", 0) + rej.get("unknown_sender", 0)
        assert rej.get("bad_auth", 0) > 0 and forged_refused >= 0.8 * sent["forged"]
        assert rej.get("replay", 0) >= 0.8 * sent["replay"]
        assert s["final"]["honest_mean_acc"] > 0.6

    def test_flooding_byzantine_node_gets_graylisted(self) -> None:
        sim = Simulation(scenario(byzantine={"count": 1, "attack": "flood:rate=20"}), seed=0)
        sim.run()
        flooder = f"addr:{sim.net.address(11)[0]}:{sim.net.address(11)[1]}"
        graylisted = [c.scores.addr_graylisted(flooder, sim.net.now) for c in sim.net.nodes[:11]]
        assert sum(graylisted) >= 6

    def test_churned_nodes_rejoin_without_seqno_reuse(self) -> None:
        s = run_scenario(
            scenario(
                rounds=12,
                network={
                    "churn": {
                        "fraction": 0.5,
                        "session": {"dist": "constant", "mean": 20},
                        "downtime": {"dist": "constant", "mean": 10},
                    }
                },
            )
        )
        # A reused seqno would show up as replay rejections between honest nodes.
        assert s["final"]["rejections"].get("replay", 0) == 0
        assert s["final"]["honest_mean_acc"] > 0.6


class TestByzantine:
    @pytest.mark.parametrize("attack", ["gaussian", "sign_flip"])
    def test_clipping_resists_where_mean_breaks(self, attack: str) -> None:
        """Worst honest accuracy of the typical network: the median over three seeds. One
        network's luck varies: a sign-flipper costs the plain mean 10 to 47 points depending
        on the seed, and Gaussian noise gets through clipping in seed 1 (worst honest 54%
        against 87% attack-free: the open weakness issue 17's reference-set screening is for)."""
        over = {"nodes": 16, "rounds": 10, "privacy": {"epsilon": None}}
        byz = {"fraction": 0.25, "attack": attack}
        plain = {"aggregation": "mean", **SCREENS_OFF}

        def worst(**kw: Any) -> float:
            runs = [run_scenario(scenario(**over, **kw), seed=seed) for seed in range(3)]
            return float(np.median([r["final"]["honest_worst_acc"] for r in runs]))

        base = worst(byzantine={"attack": "none"})
        assert worst(byzantine=byz) >= base - 0.1
        assert worst(byzantine=byz, gossip=plain) < base - 0.15


class TestScenarioFiles:
    def test_unknown_key_and_bad_attack_are_clear(self) -> None:
        with pytest.raises(ConfigError, match="unknown key"):
            validate_config({"nodez": 3}, Scenario, "x.yaml")
        with pytest.raises(ConfigError, match="unknown attack"):
            validate_config({"byzantine": {"count": 1, "attack": "nope"}}, Scenario, "x.yaml")

    @pytest.mark.parametrize(
        "path",
        sorted(Path("configs").glob("sim_*.yaml")) + sorted(Path("simulations").glob("*.yaml")),
    )
    def test_shipped_files_validate(self, path: Path) -> None:
        from flava_p2p.config import load_config
        from flava_p2p.sim.sweep import expand

        if "grid" in path.read_text():
            _, runs = expand(path)
            assert runs
        else:
            load_config(path, Scenario)

    def test_mapping_axis_sets_keys_together(self, tmp_path: Path) -> None:
        """A grid axis of mappings sets several keys per value; its label names the run, and
        the summary's defence says when the screens were off."""
        from flava_p2p.sim.runner import defence_label
        from flava_p2p.sim.sweep import expand

        sweep = tmp_path / "s.yaml"
        sweep.write_text(
            "scenario: {nodes: 4, learner.kind: synthetic}\n"
            "grid:\n  defence:\n    - {gossip.aggregation: krum}\n"
            "    - {label: plain, gossip.aggregation: mean, gossip.opposed_cosine: null,"
            " gossip.max_norm_ratio: null, gossip.max_one_sided: null,"
            " gossip.min_alignment: null}\n"
        )
        _, runs = expand(sweep)
        labels = [label for label, _, _ in runs]
        assert labels == ["defence=krum__seed=0", "defence=plain__seed=0"]
        plain = runs[1][1]
        assert (plain.gossip.aggregation, plain.gossip.opposed_cosine) == ("mean", None)
        assert defence_label(runs[0][1]) == "krum"
        assert defence_label(plain) == "mean (unscreened)"

    @pytest.mark.slow  # subprocesses / long run: `scripts/test.sh --slow`
    def test_sweep_report_has_heatmap_and_privacy_curve(self, tmp_path: Path) -> None:
        from flava_p2p.sim.sweep import run_sweep

        sweep = tmp_path / "s.yaml"
        sweep.write_text(
            "name: m\nscenario: {nodes: 8, rounds: 3, learner.kind: synthetic,"
            " metrics.plots: false, byzantine.count: 2}\n"
            "grid:\n  byzantine.attack: [none, sign_flip]\n  gossip.aggregation: [clipped, mean]\n"
            "  privacy.epsilon: [8, null]\n"
        )
        results = run_sweep(sweep, tmp_path / "out", jobs=2)
        assert len(results) == 8
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        names = {Path(p).name for p in report["plots"]}
        assert {"accuracy.png", "privacy.png", "heatmap.png"} <= names
        assert "sign_flip|mean" in report["matrix"]["damage_vs_no_attack"]

    def test_node_count_sweep_plots_accuracy_against_n(self, tmp_path: Path) -> None:
        """Runs that differ in their node count get nodes.png (accuracy against N)."""
        from flava_p2p.sim.sweep import write_report

        dirs = []
        for n in (4, 8):
            run_scenario(scenario(nodes=n, rounds=2), tmp_path / f"n{n}")
            dirs.append(tmp_path / f"n{n}")
        report = write_report(dirs, tmp_path / "rep")
        assert "nodes.png" in {Path(p).name for p in report["plots"]}
        assert (tmp_path / "rep" / "nodes.png").stat().st_size > 0
        assert [r["nodes"] for r in report["runs"]] == [4, 8]

    def test_sweep_resume_runs_only_unfinished_cells(self, tmp_path: Path) -> None:
        """An interrupted sweep resumed: finished cells are kept as they are, the rest run."""
        from flava_p2p.sim.sweep import run_sweep

        sweep = tmp_path / "s.yaml"
        sweep.write_text(
            "name: r\nscenario: {nodes: 4, rounds: 2, learner.kind: none, metrics.plots: false}\n"
            "grid:\n  gossip.fanout: [1, 2, 3]\n"
        )
        first = run_sweep(sweep, tmp_path / "out", jobs=1)
        assert len(first) == 3
        dirs = sorted(Path(r["run_dir"]) for r in first)
        kept = {d: (d / "summary.json").stat().st_mtime_ns for d in dirs[:2]}
        (dirs[2] / "summary.json").unlink()  # as if the sweep had stopped during this cell
        again = run_sweep(sweep, tmp_path / "out", jobs=1, resume=True)
        assert len(again) == 3 and (dirs[2] / "summary.json").is_file()
        assert {d: (d / "summary.json").stat().st_mtime_ns for d in dirs[:2]} == kept


def test_node_level_epsilon_is_reported_with_message_noise(tmp_path: Path) -> None:
    """With message noise on, every record and the summary carry the node-level ε (its own
    unit), and it grows with the releases; without it, neither does (metrics unchanged)."""
    noisy = small_scenario(privacy={"epsilon": 8.0, "message_noise_multiplier": 2.0})
    out = run_scenario(noisy, tmp_path / "n", seed=1)
    node = out["privacy"]["node_level"]
    assert node["unit"].startswith("node") and node["noise_multiplier"] == 2.0
    records = [json.loads(x) for x in (tmp_path / "n" / "metrics.jsonl").read_text().splitlines()]
    series = [r["node_epsilon_max"] for r in records]
    assert series == sorted(series) and series[-1] == node["epsilon_max"] > 0
    plain = run_scenario(small_scenario(), tmp_path / "p", seed=1)
    assert "node_level" not in plain["privacy"]
    assert "node_epsilon_max" not in (tmp_path / "p" / "metrics.jsonl").read_text()


@pytest.mark.parametrize("learner", ["none", "synthetic"])
def test_runs_without_a_real_learner_never_import_torch(tmp_path: Path, learner: str) -> None:
    """Protocol-only and non-private synthetic runs start without torch: ~4 s and ~0.7 GB less
    per run, which matters for sweeps of many small protocol runs. (The DP accountant is
    Opacus's, which imports torch: a private synthetic run still loads it.)"""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from flava_p2p.cli.sim import main\n"
        "assert main() == 0\n"
        "heavy = ('torch', 'opacus', 'torchaudio')\n"
        "print('LOADED', sorted(m for m in heavy if m in sys.modules))\n"
    )
    path = tmp_path / "s.yaml"
    path.write_text(
        f"name: t\nnodes: 4\nrounds: 2\nlearner: {{kind: {learner}}}\n"
        "privacy: {epsilon: null}\nmetrics: {plots: false}\n"
    )
    args = ["run", str(path), "--out", str(tmp_path / "run"), "--json"]
    done = subprocess.run(
        [sys.executable, "-c", probe, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LOADED []" in done.stdout, done.stdout[-500:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["learner"] == learner
