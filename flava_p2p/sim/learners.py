"""Learners the simulator plugs into the event loop: what a node does on ``TrainRequest``.

``RealLearners`` run each node's own :class:`LocalTrainer` (Opacus DP-SGD, privacy ledger),
exactly the object a real node uses; feature tensors are decoded once (cached on disk) and
sliced per node. ``SyntheticLearners`` are softmax regression on Gaussian blobs with the
same DP-SGD recipe (Poisson sampling, per-example clipping, Gaussian noise, same accountant) in
numpy, for protocol-scale runs. ``StaticLearners`` never change the model (protocol only).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import structlog

from flava_p2p.attacks import flip_labels, parse_attack
from flava_p2p.config import ModelConfig, PrivacyConfig
from flava_p2p.errors import FlavaError
from flava_p2p.learning.ledger import PrivacyLedger
from flava_p2p.sim.scenario import Scenario
from flava_p2p.wire.messages import DpInfo

log = structlog.get_logger(__name__)
Vec = npt.NDArray[np.float32]


class Learners(Protocol):
    """One learner per node, behind one interface."""

    genesis: Vec
    schema: bytes
    n_classes: int

    def train(self, i: int, model: Vec) -> tuple[Vec, int, DpInfo]:
        """Train node ``i`` from ``model``; returns (model, sample count, guarantees)."""
        ...

    def evaluate(self, models: dict[int, Vec]) -> dict[int, float]:
        """Held-out accuracy of each given model (empty when the learner has no task)."""
        ...

    def epsilon(self, i: int) -> float | None:
        """Example-level ε node ``i`` has spent (None: not private)."""
        ...

    def train_many(self, jobs: list[tuple[int, Vec]]) -> dict[int, tuple[Vec, int, DpInfo]]:
        """Several nodes' bursts at once."""
        ...

    def close(self) -> None:
        """Release worker processes, if any."""
        ...


class _OneByOne:
    """``train_many`` as a loop over ``train``, for learners that are cheap per node."""

    def train(self, i: int, model: Vec) -> tuple[Vec, int, DpInfo]:
        raise NotImplementedError

    def train_many(self, jobs: list[tuple[int, Vec]]) -> dict[int, tuple[Vec, int, DpInfo]]:
        """Run the bursts one after the other."""
        return {i: self.train(i, model) for i, model in jobs}

    def close(self) -> None:
        """Nothing to release."""


def node_privacy(sc: Scenario) -> PrivacyConfig:
    """Every simulated node's privacy settings: exactly the scenario's (one schema with the
    node's; ``planned_steps`` defaults to rounds × local_steps, resolved by the scenario)."""
    return sc.privacy


def planned_steps(sc: Scenario) -> int:
    """DP steps a node plans for."""
    return sc.privacy.planned_steps


def label_flippers(sc: Scenario) -> set[int]:
    """Byzantine nodes whose attack is ``label_flip`` (they train on flipped labels)."""
    if not sc.byzantine_nodes() or parse_attack(sc.byzantine.attack).name != "label_flip":
        return set()
    return set(sc.byzantine_nodes())


# ----------------------------------------------------------------------------- real
def ensure_corpus(root: str | Path, seed: int, speakers: int = 60, takes: int = 5) -> Path:
    """The corpus at ``root``; voiced with espeak-ng on first use. An existing corpus (imported
    real speech, or a finished synthetic one) is used as it is; only a missing or empty folder,
    or a synthesis that was interrupted (its marker file is still there), is (re)generated."""
    from flava_p2p.speech.synth import INCOMPLETE_MARKER

    path = Path(root)
    if (path / "corpus.json").is_file():
        return path
    if path.is_dir() and any(path.iterdir()) and not (path / INCOMPLETE_MARKER).exists():
        return path
    from flava_p2p.speech.synth import synthesize_corpus

    log.info("generating the synthetic corpus (first use)", out=str(path), takes=takes)
    synthesize_corpus(path, n_speakers=speakers, takes=takes, seed=seed)
    return path


def _quiet_known_warnings() -> None:
    """Silence two warnings that are expected here and would bury the progress output:
    Opacus' "secure RNG off" (simulations seed DP noise on purpose, for reproducibility; real
    nodes draw it from OS entropy) and torch's note that the first layer's input needs no
    gradient (it is audio features, never a parameter)."""
    import warnings

    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")


class RealLearners:
    """Every node trains the keyword model on its own speakers with its own trainer.

    With ``learner.workers > 1`` the trainers live in that many worker processes (node i in
    worker i mod W, for its whole life: ledger, optimiser state and noise RNG stay put), and
    :meth:`train_many` runs a batch of bursts on all of them at once. Results do not depend on
    the number of workers: each trainer only ever sees its own inputs.
    """

    def __init__(self, sc: Scenario, seed: int, own: list[int] | None = None) -> None:
        import torch

        from flava_p2p.learning.trainer import LocalTrainer
        from flava_p2p.speech.dataset import load_features, scan_corpus

        torch.set_num_threads(sc.learner.threads)
        _quiet_known_warnings()
        root = ensure_corpus(sc.data.corpus, 0, sc.data.synth_speakers, sc.data.synth_takes)
        # Clips are encoded once, here, before any worker starts (workers hit the cache): use
        # every core for it.
        enc_threads = (os.cpu_count() or 1) if own is None else 1
        fs = load_features(
            scan_corpus(root), sc.data.features, cache_dir=sc.data.cache_dir, threads=enc_threads
        )
        train = fs.split("train")
        if sc.data.eval_corpus is not None:
            test = load_features(
                scan_corpus(sc.data.eval_corpus),
                sc.data.features,
                cache_dir=sc.data.cache_dir,
                threads=enc_threads,
            )
            if test.label_names != fs.label_names:
                raise FlavaError(
                    f"data.eval_corpus {sc.data.eval_corpus}: labels {test.label_names} differ "
                    f"from the training corpus' {fs.label_names}; both need the same label "
                    f"folders."
                )
        elif sc.data.eval_split == "heldout":
            test = fs.subset([i for i, split in enumerate(fs.splits) if split != "train"])
        else:
            test = fs.split("test")
            if len(test) == 0:
                test = fs.split("validation")
        if len(test) == 0:
            raise FlavaError(
                f"{root}: no held-out speakers (testing_list.txt/validation_list.txt); the "
                f"simulator measures accuracy on them. Regenerate with `flava-sim dataset synth`."
            )
        if sc.metrics.eval_examples is not None and len(test) > sc.metrics.eval_examples:
            pick = np.random.default_rng(seed).permutation(len(test))[: sc.metrics.eval_examples]
            test = test.subset(np.sort(pick))
        self.test_x, self.test_y = test.features, test.labels.numpy()
        self.n_classes = len(fs.label_names)
        parts = _partition(sc, train.speakers, train.labels.numpy(), seed)
        flippers = label_flippers(sc)
        model_cfg = ModelConfig(
            name=sc.learner.model, width=sc.learner.width, pooling=sc.learner.pooling
        )
        privacy = node_privacy(sc)
        workers = sc.learner.workers if own is None else 1
        if own is None:
            own = list(range(len(parts))) if workers == 1 else [0]  # node 0: genesis/schema
        self.trainers: dict[int, LocalTrainer] = {}
        for i in own:
            local = train.subset(parts[i])
            if i in flippers:
                local.labels = torch.as_tensor(flip_labels(local.labels.numpy(), self.n_classes))
            self.trainers[i] = LocalTrainer(
                local,
                model_cfg=model_cfg,
                feature_cfg=sc.data.features,
                training=sc.learner.training,
                privacy=privacy,
                seed=seed * 100_003 + i,
                genesis_seed=seed,
                noise_seed=seed * 100_003 + i,  # reproducible runs; a real node uses OS entropy
            )
        first = self.trainers[own[0]]
        self.genesis = first.get_flat()
        self.schema = bytes.fromhex(first.schema)
        self.schema_card = first.schema_card
        self._steps = sc.learner.training.local_steps
        self._eval = _Evaluator(first.model)
        self._eps: dict[int, float | None] = {}
        self._pool = _WorkerPool(sc, seed, len(parts), workers) if workers > 1 else None

    def train(self, i: int, model: Vec) -> tuple[Vec, int, DpInfo]:
        """K DP-SGD steps of node ``i``'s own trainer, from the merged model."""
        return self.train_many([(i, model)])[i]

    def train_many(self, jobs: list[tuple[int, Vec]]) -> dict[int, tuple[Vec, int, DpInfo]]:
        """Several nodes' bursts (in parallel when there are worker processes)."""
        if self._pool is not None:
            out = self._pool.run(jobs)
        else:
            out = {}
            for i, model in jobs:
                t = self.trainers[i]
                t.set_flat(model)
                report = t.train(self._steps)
                out[i] = (t.get_flat(), t.n_train, DpInfo(report.epsilon, report.delta))
        for i, (_, _, dp) in out.items():
            self._eps[i] = dp.example_epsilon
        return out

    def evaluate(self, models: dict[int, Vec]) -> dict[int, float]:
        """Held-out accuracy of every given model."""
        if not models:
            return {}
        if self._pool is not None:
            return self._pool.evaluate(models)
        return {
            k: float((self._eval.predict(models[k], self.test_x) == self.test_y).mean())
            for k in sorted(models)
        }

    def epsilon(self, i: int) -> float | None:
        """ε of the node's ledger after its last burst (example-level); 0 before any."""
        if i in self._eps:
            return self._eps[i]
        return 0.0 if self.trainers[next(iter(self.trainers))].ledger else None

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.close()


class _WorkerPool:
    """W spawned processes, each owning the trainers of nodes i ≡ w (mod W)."""

    def __init__(self, sc: Scenario, seed: int, n_nodes: int, workers: int) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
        self.workers = workers
        self.conns = []
        self.procs = []
        payload = sc.model_dump_json()
        for w in range(workers):
            parent, child = ctx.Pipe()
            own = list(range(w, n_nodes, workers))
            proc = ctx.Process(target=_worker_main, args=(child, payload, seed, own), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            msg = conn.recv()
            if isinstance(msg, BaseException):
                raise FlavaError(f"simulator training worker failed to start: {msg}")

    def run(self, jobs: list[tuple[int, Vec]]) -> dict[int, tuple[Vec, int, DpInfo]]:
        """Scatter jobs to their owners, gather every result."""
        per: list[list[tuple[int, Vec]]] = [[] for _ in range(self.workers)]
        for i, model in jobs:
            per[i % self.workers].append((i, model))
        for conn, batch in zip(self.conns, per, strict=True):
            if batch:
                conn.send(("train", batch))
        out: dict[int, tuple[Vec, int, DpInfo]] = {}
        for conn, batch in zip(self.conns, per, strict=True):
            if batch:
                res = conn.recv()
                if isinstance(res, BaseException):
                    raise FlavaError(f"simulator training worker failed: {res}")
                for i, vec, n, eps, delta in res:
                    out[i] = (vec, n, DpInfo(eps, delta))
        return out

    def evaluate(self, models: dict[int, Vec]) -> dict[int, float]:
        """Split the models over the workers; each evaluates its share."""
        keys = sorted(models)
        shares = [keys[w :: self.workers] for w in range(self.workers)]
        for conn, share in zip(self.conns, shares, strict=True):
            conn.send(("eval", {k: models[k] for k in share}))
        out: dict[int, float] = {}
        for conn in self.conns:
            res = conn.recv()
            if isinstance(res, BaseException):
                raise FlavaError(f"simulator evaluation worker failed: {res}")
            out.update(res)
        return dict(sorted(out.items()))

    def close(self) -> None:
        for conn in self.conns:
            conn.send(None)
        for proc in self.procs:
            proc.join(timeout=10)


def _worker_main(conn: Any, payload: str, seed: int, own: list[int]) -> None:
    """Worker process: build the owned trainers, then train batches until told to stop."""
    try:
        sc = Scenario.model_validate_json(payload)
        sc = sc.model_copy(update={"learner": sc.learner.model_copy(update={"threads": 1})})
        learners = RealLearners(sc, seed, own=own)
        conn.send("ready")
    except Exception as exc:  # reported to the parent, which raises a clear error
        conn.send(exc)
        return
    while (msg := conn.recv()) is not None:
        kind, body = msg
        try:
            if kind == "eval":
                conn.send(learners.evaluate(body))
                continue
            res = learners.train_many(body)
            conn.send(
                [(i, v, n, dp.example_epsilon, dp.example_delta) for i, (v, n, dp) in res.items()]
            )
        except Exception as exc:
            conn.send(exc)


class _Evaluator:
    """Evaluate flat weight vectors with one spare copy of the model.

    A plain loop: ``vmap(functional_call)`` over stacked weights was measured 4.5× slower here
    (grouped convolutions), so the per-model loop is the fast path on CPU.
    """

    def __init__(self, model: object) -> None:
        import copy

        import torch

        assert isinstance(model, torch.nn.Module)
        self.model = copy.deepcopy(model)
        self.model.train(False)
        self.params = list(self.model.parameters())

    def predict(self, flat: Vec, x: object) -> npt.NDArray[np.int64]:
        """Predicted class per row of ``x`` under the weights ``flat``."""
        import torch

        from flava_p2p.learning.models import predict_classes

        assert isinstance(x, torch.Tensor)
        w = torch.as_tensor(flat)
        with torch.no_grad():
            off = 0
            for p in self.params:
                p.copy_(w[off : off + p.numel()].view_as(p))
                off += p.numel()
        pred: npt.NDArray[np.int64] = predict_classes(self.model, x).numpy()
        return pred


def _partition(
    sc: Scenario, speakers: list[str], labels: npt.NDArray[np.int64], seed: int
) -> list[npt.NDArray[np.int64]]:
    from flava_p2p.speech import partition

    n = sc.nodes
    if sc.data.partition == "speaker":
        # More nodes than speakers: each speaker's clips are split over several nodes.
        return partition.by_speaker(speakers, n_parts=n, seed=seed)
    if sc.data.partition == "iid":
        return partition.iid(len(labels), n, seed=seed)
    return partition.dirichlet(labels, n, sc.data.alpha, seed=seed)


# ----------------------------------------------------------------------------- synthetic
class SyntheticLearners(_OneByOne):
    """Softmax regression on Gaussian blobs, DP-SGD in numpy; thousands of nodes per second."""

    def __init__(self, sc: Scenario, seed: int) -> None:
        ls = sc.learner
        rng = np.random.default_rng(seed)
        d, c, n = ls.synthetic_dim, ls.synthetic_classes, ls.synthetic_samples
        self.d, self.n_classes = d, c
        self.means = rng.normal(size=(c, d)).astype(np.float32) * 0.6
        flippers = label_flippers(sc)
        self.data: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]] = []
        for i in range(sc.nodes):
            if sc.data.partition == "dirichlet":
                y = rng.choice(c, size=n, p=rng.dirichlet([sc.data.alpha] * c))
            else:
                y = rng.integers(0, c, size=n)
            x = self._features(y, rng)
            if i in flippers:
                y = flip_labels(y, c)
            self.data.append((x, y.astype(np.int64)))
        ty = rng.integers(0, c, size=sc.metrics.eval_examples or 1000)
        self.test_x, self.test_y = self._features(ty, rng), ty
        self.genesis = np.zeros((d + 1) * c, dtype=np.float32)
        self.schema = b"synthetic-softmax".ljust(32, b"\0")
        tr = ls.training
        self.steps, self.lr = tr.local_steps, tr.lr
        self.batch = min(tr.batch_size, n)
        self.clip = sc.privacy.max_grad_norm
        self._rngs = [np.random.default_rng([seed, i]) for i in range(sc.nodes)]
        self._taken = [0] * sc.nodes
        self.ledger: PrivacyLedger | None = None
        if sc.privacy.epsilon is not None:
            self.ledger = PrivacyLedger.plan(node_privacy(sc), self.batch / n)
        self._eps_cache: dict[int, float] = {}

    def _features(self, y: npt.NDArray[np.int64], rng: np.random.Generator) -> Vec:
        x = self.means[y] + rng.normal(size=(len(y), self.d)).astype(np.float32)
        return np.hstack([x, np.ones((len(y), 1), np.float32)])  # bias column

    def train(self, i: int, model: Vec) -> tuple[Vec, int, DpInfo]:
        """Local DP-SGD steps (clip each example's gradient, add N(0, σ²C²), SGD)."""
        x, y = self.data[i]
        rng = self._rngs[i]
        w = model.reshape(self.d + 1, self.n_classes).astype(np.float64)
        steps = self.steps
        if self.ledger is not None:
            steps = min(steps, max(0, self.ledger.planned_steps - self._taken[i]))
        for _ in range(steps):
            if self.ledger is not None:  # Poisson sampling
                pick = np.flatnonzero(rng.random(len(y)) < self.batch / len(y))
            else:
                pick = rng.choice(len(y), self.batch, replace=False)
            xb, yb = x[pick], y[pick]
            logits = xb @ w
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(yb)), yb] -= 1.0  # p − onehot(y)
            if self.ledger is not None:
                # ‖x pᵀ‖_F = ‖x‖·‖p‖ for a per-example outer product.
                norms = np.linalg.norm(xb, axis=1) * np.linalg.norm(p, axis=1)
                p *= np.minimum(1.0, self.clip / np.maximum(norms, 1e-12))[:, None]
                grad = xb.T @ p
                grad += rng.normal(size=grad.shape) * self.ledger.noise_multiplier * self.clip
                grad /= self.batch
            else:
                grad = xb.T @ p / max(len(yb), 1)
            w -= self.lr * grad
        self._taken[i] += steps
        return w.astype(np.float32).reshape(-1), len(y), DpInfo(self.epsilon(i), self._delta())

    def _delta(self) -> float | None:
        return self.ledger.delta if self.ledger else None

    def epsilon(self, i: int) -> float | None:
        """ε after this node's steps so far (every node shares σ and q, so ε is a function of
        the step count; computed once per count)."""
        if self.ledger is None:
            return None
        k = self._taken[i]
        if k not in self._eps_cache:
            self._eps_cache[k] = self.ledger.epsilon_after(k) if k else 0.0
        return self._eps_cache[k]

    def evaluate(self, models: dict[int, Vec]) -> dict[int, float]:
        """Accuracy of each model on the shared held-out blobs."""
        if not models:
            return {}
        keys = sorted(models)
        w = np.stack([models[k] for k in keys]).reshape(len(keys), self.d + 1, self.n_classes)
        pred = np.einsum("nd,kdc->knc", self.test_x, w).argmax(2)
        acc = (pred == self.test_y[None, :]).mean(1)
        return {k: float(a) for k, a in zip(keys, acc, strict=True)}


class StaticLearners(_OneByOne):
    """No learning: the model never changes (protocol-only runs measure the protocol)."""

    n_classes = 0

    def __init__(self, sc: Scenario, seed: int) -> None:
        self.genesis = np.zeros(64, dtype=np.float32)
        self.schema = b"protocol-only".ljust(32, b"\0")

    def train(self, i: int, model: Vec) -> tuple[Vec, int, DpInfo]:
        """Return the model unchanged."""
        return model, 1, DpInfo(None, None)

    def evaluate(self, models: dict[int, Vec]) -> dict[int, float]:
        """Nothing to evaluate."""
        return {}

    def epsilon(self, i: int) -> float | None:
        """Not private: no data is touched."""
        return None


def make_learners(sc: Scenario, seed: int) -> Learners:
    """The learner family the scenario asks for."""
    if sc.learner.kind == "real":
        return RealLearners(sc, seed)
    if sc.learner.kind == "synthetic":
        return SyntheticLearners(sc, seed)
    return StaticLearners(sc, seed)
