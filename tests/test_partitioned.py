"""The partitioned engine: the same scenario and seed give the same metrics, byte for byte, in
one process, in several in-process partitions, and over a local 2-worker Ray cluster."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from flava_p2p.errors import FlavaError
from flava_p2p.sim.partitioned import PartitionedRun, balanced_blocks, run_partitioned
from flava_p2p.sim.runner import run_scenario
from flava_p2p.testing.scenarios import small_scenario as scenario

# Everything that can be split: loss, bursts, duplicates, reordering, a network partition,
# churn and Byzantine ALIE peers (rogue fault hosts need one process: refused, tested below).
EVERYTHING: dict[str, Any] = {
    "byzantine": {"count": 2, "attack": "alie"},
    "network": {
        "loss": 0.05,
        "min_latency_s": 0.005,
        "burst": {"p_good_to_bad": 0.05, "p_bad_to_good": 0.3, "loss_in_bad": 0.6},
        "duplicate": 0.02,
        "reorder": 0.05,
        "partitions": [{"at": 10, "heal": 20, "fraction": 0.5}],
        "churn": {"fraction": 0.3, "session": {"dist": "exponential", "mean": 15}},
    },
}


def metrics(path: Path) -> bytes:
    return (path / "metrics.jsonl").read_bytes()


class TestSameBytes:
    def test_three_partitions_equal_one_process(self, tmp_path: Path) -> None:
        """Windows of min_latency_s and cross-partition exchange lose or reorder nothing."""
        sc = scenario(**EVERYTHING)
        run_scenario(sc, tmp_path / "local", seed=5)
        s = run_partitioned(sc, tmp_path / "split", seed=5, workers=3, backend="inline")
        assert metrics(tmp_path / "split") == metrics(tmp_path / "local")
        assert s["engine"]["workers"] == 3 and s["engine"]["windows"] > 100
        # and the split did matter: nodes in different partitions exchanged datagrams
        assert s["final"]["delivered"] > 0 and s["final"]["honest_mean_acc"] > 0.5

    def test_discovery_from_one_bootstrap_splits_exactly(self, tmp_path: Path) -> None:
        """Peer sampling from node 0 across partitions (found a timer scheduled in the past,
        which let virtual time run backwards and reordered nodes; now due at once)."""
        sc = scenario(
            nodes=30,
            rounds=3,
            topology={"kind": "discovered"},
            gossip={"view_size": 8},
            network={"loss": 0.01, "min_latency_s": 0.005},
        )
        run_scenario(sc, tmp_path / "local", seed=1)
        run_partitioned(sc, tmp_path / "split", seed=1, workers=2, backend="inline")
        assert metrics(tmp_path / "split") == metrics(tmp_path / "local")

    def test_batched_dp_learner_splits_exactly(self, tiny_corpus: Path, tmp_path: Path) -> None:
        """The batched DP-SGD learner (each node's own noise and sampling streams) gives
        each node the same weights, to the bit, whichever nodes share its batch: nodes of
        uneven sizes draw uneven batches (a shared padded width changed the rounding)."""
        sc = scenario(
            nodes=6,
            rounds=6,
            learner={
                "kind": "real",
                "model": "embed_linear",
                "threads": 1,
                "training": {"batch_size": 8, "local_steps": 3},
            },
            data={
                "corpus": str(tiny_corpus),
                "partition": "iid",
                "quantity_skew": 2.0,
                "cache_dir": None,
            },
            network={"min_latency_s": 0.01},
        )
        local = run_scenario(sc, tmp_path / "local", seed=2)
        run_partitioned(sc, tmp_path / "split", seed=2, workers=2, backend="inline")
        assert metrics(tmp_path / "split") == metrics(tmp_path / "local")
        assert 0 < local["privacy"]["epsilon_max"] <= 8.0 + 1e-6

    @pytest.mark.parametrize("epsilon", [8.0, None], ids=["batched-dp", "per-node-trainers"])
    def test_a_partition_builds_only_its_own_learners(
        self, tiny_corpus: Path, tmp_path: Path, epsilon: float | None
    ) -> None:
        """A partition builds the data and learner state of its own nodes only (block 2 of 2
        does not even hold node 0, whose trainer used to give the schema), and the split run
        still writes the one-process bytes, for the batched learner and for per-node trainers
        (non-private: not batchable)."""
        from flava_p2p.sim.runner import Simulation

        sc = scenario(
            nodes=5,
            rounds=3,
            learner={"kind": "real", "model": "embed_linear", "threads": 1},
            data={"corpus": str(tiny_corpus), "partition": "iid", "cache_dir": None},
            privacy={"epsilon": epsilon},
            network={"min_latency_s": 0.01},
        )
        part = Simulation(sc, seed=6, owned={3, 4})
        assert set(part.learners._local) == {3, 4}  # type: ignore[attr-defined]
        assert set(part.learners.trainers) <= {3, 4}  # type: ignore[attr-defined]
        whole = Simulation(sc, seed=6)
        assert part.learners.schema == whole.learners.schema
        assert (part.learners.genesis == whole.learners.genesis).all()
        run_scenario(sc, tmp_path / "local", seed=6)
        run_partitioned(sc, tmp_path / "split", seed=6, workers=2, backend="inline")
        assert metrics(tmp_path / "split") == metrics(tmp_path / "local")

    def test_two_worker_processes_equal_one_process(self, tmp_path: Path) -> None:
        """Spawned child processes exchanging msgpack frames over pipes (the ``processes``
        engine): Byzantine datagrams, numpy models and float32 accuracies cross unchanged."""
        sc = scenario(**EVERYTHING)
        run_scenario(sc, tmp_path / "local", seed=3)
        s = run_partitioned(sc, tmp_path / "procs", seed=3, workers=2, backend="processes")
        assert metrics(tmp_path / "procs") == metrics(tmp_path / "local")
        assert s["engine"]["kind"] == "processes" and s["engine"]["windows"] > 100

    def test_worker_processes_train_on_one_thread_each(
        self, tiny_corpus: Path, tmp_path: Path
    ) -> None:
        """Building a partition's learners sets learner.threads; each process of a
        ``processes`` run then goes back to one torch thread (it has one core: two children
        on two threads each made a 2,000-node DP run 1.4x slower). Same bytes as one process
        on two threads."""
        sc = scenario(
            nodes=4,
            rounds=3,
            learner={"kind": "real", "model": "embed_linear", "threads": 2},
            data={"corpus": str(tiny_corpus), "partition": "iid", "cache_dir": None},
            network={"min_latency_s": 0.01},
        )
        run_scenario(sc, tmp_path / "local", seed=4)
        s = run_partitioned(sc, tmp_path / "procs", seed=4, workers=2, backend="processes")
        assert metrics(tmp_path / "procs") == metrics(tmp_path / "local")
        assert s["engine"]["torch_threads"] == [1, 1]

    def test_the_run_clock_starts_with_every_partition_built(self) -> None:
        """A child process builds its nodes while the driver builds its own. The driver's
        constructor waits for it: when the run's clock starts, every partition must already
        be built (as in one process, where the build is not timed). Asking each partition
        only when the run started counted a slower child's build, ~4 s on protocol_10k, as
        simulation time."""
        sc = scenario(nodes=8, rounds=2, network={"min_latency_s": 0.01})
        run = PartitionedRun(sc, workers=2, backend="processes")
        try:
            assert len(run.torch_threads) == 2  # both partitions have answered: built
            assert run.windows == 0  # and nothing was simulated yet
        finally:
            run._close()

    def test_two_ray_workers_equal_one_process(self, tmp_path: Path) -> None:
        """A local Ray cluster of two CPU workers (real actors, real processes)."""
        ray = pytest.importorskip("ray")
        sc = scenario(**EVERYTHING)
        run_scenario(sc, tmp_path / "local", seed=7)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            s = run_partitioned(sc, tmp_path / "ray", seed=7, workers=2, backend="ray")
        finally:
            ray.shutdown()
        assert metrics(tmp_path / "ray") == metrics(tmp_path / "local")
        assert s["engine"]["kind"] == "ray"


class TestCodec:
    """What partitions send each other comes back with the same types and values."""

    def test_round_trip_keeps_types(self) -> None:
        import numpy as np

        from flava_p2p.sim.partition_codec import decode, encode

        model = np.arange(6, dtype=np.float32).reshape(2, 3)
        value: dict[str, Any] = {
            "datagrams": [(0.25, 3, 7, 11, ("10.0.0.7", 9000), b"\x00\xff")],
            "models": {4: model},
            "acc": {4: np.float32(0.8125), 5: 0.5},
            "counts": Counter(a=2),
            "t": float("inf"),
        }
        back = decode(encode(value))
        assert back["datagrams"] == value["datagrams"]
        assert isinstance(back["datagrams"][0][4], tuple)
        m = back["models"][4]
        assert m.dtype == np.float32 and m.shape == (2, 3) and (m == model).all()
        assert type(back["acc"][4]) is np.float32 and back["acc"][4] == np.float32(0.8125)
        assert back["counts"] == {"a": 2} and back["t"] == float("inf")

    def test_damaged_frames_are_refused(self) -> None:
        import msgpack

        from flava_p2p.sim.partition_codec import CodecError, decode, encode

        good = encode({"m": __import__("numpy").zeros(4, "float32")})
        with pytest.raises(CodecError):
            decode(good[:-3])
        lying = msgpack.packb(msgpack.ExtType(2, msgpack.packb(["f4", [100], False, b"1234"])))
        with pytest.raises(CodecError, match="bytes"):
            decode(lying)
        with pytest.raises(CodecError, match="object"):
            decode(msgpack.packb(msgpack.ExtType(2, msgpack.packb(["O", [1], False, b"x" * 8]))))


class TestRefusals:
    def test_zero_latency_floor_is_a_clear_error(self) -> None:
        with pytest.raises(FlavaError, match=r"min_latency_s > 0.*--set"):
            run_partitioned(scenario(), workers=2, backend="inline")

    def test_rogue_hosts_need_one_process(self) -> None:
        sc = scenario(faults={"count": 1}, network={"min_latency_s": 0.01})
        with pytest.raises(FlavaError, match="--engine local"):
            run_partitioned(sc, workers=2, backend="inline")


class TestBalancedBlocks:
    """Nodes are split into contiguous blocks of about equal expected work."""

    def test_equal_weights_split_evenly_and_cover_every_node(self) -> None:
        blocks = balanced_blocks([1.0] * 10, 3)
        assert [len(b) for b in blocks] == [3, 4, 3]
        assert [i for b in blocks for i in b] == list(range(10))

    def test_a_heavy_node_gets_a_smaller_block(self) -> None:
        blocks = balanced_blocks([5.0] + [1.0] * 9, 2)
        assert blocks == [[0, 1, 2], list(range(3, 10))]

    def test_every_block_keeps_at_least_one_node(self) -> None:
        assert balanced_blocks([100.0, 1.0, 1.0], 3) == [[0], [1], [2]]
        assert balanced_blocks([1.0, 1.0, 100.0], 3) == [[0], [1], [2]]

    def test_after_a_node_heavier_than_a_share_the_rest_splits_evenly(self) -> None:
        """protocol_10k's weights at 8 workers: the bootstrap fills a block alone, and the
        other seven blocks share the remaining nodes evenly (not 849 and then 1,525 each)."""
        blocks = balanced_blocks([2201.0] + [1.0] * 9999, 8)
        assert blocks[0] == [0]
        assert {len(b) for b in blocks[1:]} <= {1428, 1429}
        assert [i for b in blocks for i in b] == list(range(10000))


def test_worker_processes_keep_json_output_clean(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`--json` prints one JSON document on stdout: the workers' log lines (here wire: fast's
    warning, logged by every partition) go to stderr, as the parent's do."""
    from flava_p2p.cli.sim import main

    yaml = tmp_path / "tiny.yaml"
    yaml.write_text(
        "nodes: 6\nrounds: 2\ntopology: {kind: discovered}\nlearner: {kind: none}\n"
        "privacy: {epsilon: null}\nnetwork: {min_latency_s: 0.005}\nmetrics: {plots: false}\n"
    )
    args = ["run", str(yaml), "--engine", "processes", "--workers", "2", "--set", "wire=fast"]
    assert main([*args, "--out", str(tmp_path / "run"), "--json"]) == 0
    out, err = capfd.readouterr()
    summary = json.loads(out)
    assert summary["engine"] == {**summary["engine"], "kind": "processes", "workers": 2}
    assert summary["wire"].startswith("fast")
    assert err.count("NOT signed or encrypted") >= 2  # the parent's, and the workers'
