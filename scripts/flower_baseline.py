#!/usr/bin/env python3
"""Flower FedAvg baseline for the simulator comparison (issue 6), run in a throwaway venv.

Same model (DS-CNN, width 32), same data split (48 nodes by speaker over the synthetic corpus's
training speakers, seeded exactly like ``flava-sim``), same local work per round (10 SGD steps,
batch 32, lr 0.1, momentum 0.9, via the same :class:`LocalTrainer`), same rounds (30), all clients
every round, global model evaluated on the held-out speakers every 3 rounds. Prints JSON.

Setup (not part of the project's dependencies; Flower pulls in Ray)::

    python3 -m venv /tmp/flwrenv
    printf '%s\\n' "$PWD" "$PWD/.venv/lib/python3.11/site-packages" \\
        > /tmp/flwrenv/lib/python3.11/site-packages/flava_main.pth
    /tmp/flwrenv/bin/pip install "flwr[simulation]"
    /tmp/flwrenv/bin/python scripts/flower_baseline.py --nodes 48 --rounds 30
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

ARGS: argparse.Namespace


def _scenario() -> Any:
    from flava_p2p.sim.scenario import Scenario

    return Scenario.model_validate(
        {
            "nodes": ARGS.nodes,
            "rounds": ARGS.rounds,
            "data": {"corpus": ARGS.data, "partition": "speaker", "features": {"kind": "logmel"}},
            "learner": {
                "kind": "real",
                "model": "dscnn",
                "width": 32,
                "threads": 1,
                "training": {
                    "batch_size": 32,
                    "lr": 0.1,
                    "momentum": 0.9,
                    "local_steps": 10,
                    "spec_augment": False,
                },
            },
            "privacy": {"epsilon": None},
        }
    )


_CACHE: dict[str, Any] = {}


def _data() -> tuple[Any, Any, list[Any]]:
    """(train set, test set, partitions), loaded once per worker process from the disk cache."""
    if "data" not in _CACHE:
        import torch

        from flava_p2p.sim.real_learners import _partition
        from flava_p2p.speech.dataset import load_features, scan_corpus

        torch.set_num_threads(1)
        sc = _scenario()
        fs = load_features(scan_corpus(ARGS.data), sc.data.features, cache_dir=sc.data.cache_dir)
        train, test = fs.split("train"), fs.split("test")
        parts = _partition(sc, train.speakers, train.labels.numpy(), sc.seed)
        _CACHE["data"] = (train, test, parts)
    data: tuple[Any, Any, list[Any]] = _CACHE["data"]
    return data


def _trainer(part: Any) -> Any:
    from flava_p2p.config import ModelConfig, PrivacyConfig
    from flava_p2p.learning.trainer import LocalTrainer

    sc = _scenario()
    train, _, _ = _data()
    return LocalTrainer(
        train.subset(part),
        model_cfg=ModelConfig(name="dscnn", width=32),
        feature_cfg=sc.data.features,
        training=sc.learner.training,
        privacy=PrivacyConfig(enabled=False),
        seed=0,
        genesis_seed=0,
    )


def main() -> None:
    global ARGS  # noqa: PLW0603 - Ray workers re-import this module; args travel via env
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=48)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--data", default="data/synth")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ARGS = p.parse_args()
    os.environ["FLAVA_FLOWER_ARGS"] = json.dumps(vars(ARGS))

    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    class KwsClient(NumPyClient):  # type: ignore[misc]
        def __init__(self, cid: int) -> None:
            _, _, parts = _data()
            self.trainer = _trainer(parts[cid])

        def fit(self, parameters: list[Any], config: dict[str, Any]) -> Any:
            self.trainer.set_flat(parameters[0])
            self.trainer.train(10)
            return [self.trainer.get_flat()], self.trainer.n_train, {}

    def client_fn(context: Context) -> Any:
        global ARGS  # noqa: PLW0603
        ARGS = argparse.Namespace(**json.loads(os.environ["FLAVA_FLOWER_ARGS"]))
        return KwsClient(int(context.node_config["partition-id"])).to_client()

    history: list[tuple[int, float]] = []

    def evaluate(rnd: int, parameters: list[Any], config: dict[str, Any]) -> Any:
        if rnd % 3 and rnd != ARGS.rounds:
            return None
        _, test, parts = _data()
        t = _trainer(parts[0])
        t.set_flat(parameters[0])
        acc = t.evaluate(test)["accuracy"]
        history.append((rnd, acc))
        return 0.0, {"accuracy": acc}

    _, _, parts = _data()
    genesis = _trainer(parts[0]).get_flat()

    def server_fn(context: Context) -> Any:
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=ARGS.nodes,
            min_available_clients=ARGS.nodes,
            initial_parameters=ndarrays_to_parameters([genesis]),
            evaluate_fn=evaluate,
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=ARGS.rounds))

    start = time.perf_counter()
    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=ARGS.nodes,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": ARGS.cpus},
        },
    )
    wall = time.perf_counter() - start
    print(
        json.dumps(
            {
                "framework": "flower",
                "nodes": ARGS.nodes,
                "rounds": ARGS.rounds,
                "wall_seconds": round(wall, 1),
                "final_accuracy": history[-1][1] if history else None,
                "history": history,
                "mean_accuracy_of_one_global_model": True,
                "numpy": np.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
