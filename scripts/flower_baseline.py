#!/usr/bin/env python3
"""Flower FedAvg on the same model, features, data split and rounds as
``simulations/flower_compare.yaml``, for the side-by-side in docs/benchmarks.md. Prints JSON.

Model: the default head (embed_linear over the frozen speech encoder's cached embeddings).
Data: the synthetic corpus's training speakers split over ``--nodes`` clients exactly as
``flava-sim`` splits them (same partition code, same seed); the global model is scored on the
held-out speakers. Each round every client runs the same :class:`LocalTrainer` burst as a
flava-sim node (``local_steps`` steps, same batch, lr, momentum). ``--epsilon E`` makes each
client train with example-level DP-SGD planned so that a clip spends exactly ε = E over all
rounds (σ from the same accountant, fresh noise seed per client and round); clients are
stateless between rounds, as Flower clients usually are.

Setup (not a project dependency; Flower brings its own Ray)::

    python3 -m venv /tmp/flwrenv
    printf '%s\\n' "$PWD" "$PWD/.venv/lib/python3.11/site-packages" \\
        > /tmp/flwrenv/lib/python3.11/site-packages/flava_main.pth
    /tmp/flwrenv/bin/pip install "flwr[simulation]"
    /tmp/flwrenv/bin/python scripts/flower_baseline.py --nodes 48 --rounds 30 [--epsilon 8]
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
    from flava_p2p.cli.sim_run import load_with_overrides

    sets = [f"nodes={ARGS.nodes}", f"rounds={ARGS.rounds}", f"data.corpus={ARGS.data}"]
    sets.append(f"privacy.epsilon={ARGS.epsilon if ARGS.epsilon else 'null'}")
    return load_with_overrides(ARGS.scenario, sets)


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


def _trainer(part: Any, seed: int = 0) -> Any:
    from flava_p2p.config import ModelConfig
    from flava_p2p.learning.trainer import LocalTrainer
    from flava_p2p.sim.learners import node_privacy

    sc = _scenario()
    train, _, _ = _data()
    return LocalTrainer(
        train.subset(part),
        model_cfg=ModelConfig(name=sc.learner.model, pooling=sc.learner.pooling),
        feature_cfg=sc.data.features,
        training=sc.learner.training,
        privacy=node_privacy(sc),
        seed=seed,
        genesis_seed=0,
    )


def main() -> None:
    global ARGS  # noqa: PLW0603 - Ray workers re-import this module; args travel via env
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=48)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--data", default="data/synth20")
    p.add_argument("--scenario", default="simulations/flower_compare.yaml")
    p.add_argument("--epsilon", type=float, default=None, help="client-side DP (example-level)")
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
            self.cid = cid

        def fit(self, parameters: list[Any], config: dict[str, Any]) -> Any:
            _, _, parts = _data()
            sc = _scenario()
            rnd = int(config["round"])
            # A fresh trainer per round (stateless client), with its own noise and sampling
            # seed; its ledger is planned for all rounds, so each round spends 1/rounds of it.
            trainer = _trainer(parts[self.cid], seed=1000 * self.cid + rnd)
            if trainer.ledger is not None:  # the steps of earlier rounds, on these clips
                past = (rnd - 1) * sc.learner.training.local_steps
                trainer.ledger.charge(past, trainer._clips or None)
            trainer.set_flat(parameters[0])
            report = trainer.train(sc.learner.training.local_steps)
            return [trainer.get_flat()], trainer.n_train, {"epsilon": report.epsilon or 0.0}

    def client_fn(context: Context) -> Any:
        global ARGS  # noqa: PLW0603
        ARGS = argparse.Namespace(**json.loads(os.environ["FLAVA_FLOWER_ARGS"]))
        return KwsClient(int(context.node_config["partition-id"])).to_client()

    history: list[tuple[int, float, float]] = []
    start = time.perf_counter()
    epsilons: list[float] = []

    def evaluate(rnd: int, parameters: list[Any], config: dict[str, Any]) -> Any:
        _, test, parts = _data()
        t = _trainer(parts[0])
        t.set_flat(parameters[0])
        acc = t.evaluate(test)["accuracy"]
        history.append((rnd, acc, round(time.perf_counter() - start, 2)))
        return 0.0, {"accuracy": acc}

    def fit_metrics(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        eps = max(float(m.get("epsilon", 0.0)) for _, m in results)
        epsilons.append(eps)
        return {"epsilon_max": eps}

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
            on_fit_config_fn=lambda rnd: {"round": rnd},
            fit_metrics_aggregation_fn=fit_metrics,
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=ARGS.rounds))

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
                "epsilon_target": ARGS.epsilon,
                "epsilon_max": max(epsilons) if epsilons else None,
                "wall_seconds": round(wall, 1),
                "final_accuracy": history[-1][1] if history else None,
                "history": history,
                "accuracy_of": "the one global model, on the held-out speakers",
                "numpy": np.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
