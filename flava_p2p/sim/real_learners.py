"""The ``real`` learner family: every simulated node trains with its own :class:`LocalTrainer`.

The trainer is exactly the object a real node uses (same ``fit`` / ``evaluate_weights``
interface, DP-SGD, ledger); features are encoded once (content-keyed cache) and sliced per
node. With ``learner.workers > 1`` the trainers live in worker processes
(``sim/worker_pool.py``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from flava_p2p.attacks import flip_labels
from flava_p2p.config import ModelConfig
from flava_p2p.errors import FlavaError
from flava_p2p.sim.learners import label_flippers, node_privacy
from flava_p2p.sim.scenario import ByzantineSpec, Scenario
from flava_p2p.sim.worker_pool import WorkerPool
from flava_p2p.speech.dataset import FeatureSet
from flava_p2p.task import load_task
from flava_p2p.wire.messages import DpInfo

log = structlog.get_logger(__name__)
Vec = npt.NDArray[np.float32]


def ensure_corpus(
    root: str | Path, seed: int, speakers: int = 60, takes: int = 5, *, synthesize: bool = True
) -> Path:
    """The corpus at ``root``; voiced with espeak-ng on first use. An existing corpus (imported
    real speech, or a finished synthetic one) is used as it is; only a missing or empty folder,
    or a synthesis that was interrupted (its marker file is still there), is (re)generated —
    and only when ``synthesize``; a missing real-speech corpus is an error."""
    from flava_p2p.speech.synth import INCOMPLETE_MARKER

    path = Path(root)
    if (path / "corpus.json").is_file():
        return path
    if path.is_dir() and any(path.iterdir()) and not (path / INCOMPLETE_MARKER).exists():
        return path
    if not synthesize:
        raise FlavaError(
            f"data.corpus {str(path)!r} is missing or empty, and this scenario trains on real "
            "speech (data.synthesize: false), so it is not voiced with espeak-ng. Import it "
            f"first, e.g. `flava-sim dataset import <recordings> --out {path}` (the scenario's "
            "header gives the exact command), or point data.corpus at an imported corpus."
        )
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

    #: Build one LocalTrainer per node (False: a batched learner keeps the nodes' state).
    per_node_trainers = True

    def __init__(self, sc: Scenario, seed: int, own: list[int] | None = None) -> None:
        """``own``: build only these nodes' data and trainers — a worker-pool process's share,
        or a partition's nodes in a partitioned run. Such a process has one core: it encodes
        clips on one thread and trains its nodes itself (no worker pool of its own)."""
        import torch

        from flava_p2p.learning.trainer import LocalTrainer
        from flava_p2p.speech.dataset import load_features, scan_corpus

        torch.set_num_threads(sc.learner.threads)
        _quiet_known_warnings()
        root = ensure_corpus(
            sc.data.corpus,
            0,
            sc.data.synth_speakers,
            sc.data.synth_takes,
            synthesize=sc.data.synthesize,
        )
        task = load_task(sc.data.task) if sc.data.task else None
        labels = task.labels if task else None
        # Clips are encoded once, here, before any worker starts (workers hit the cache): use
        # every core for it.
        enc_threads = (os.cpu_count() or 1) if own is None else 1
        fs = load_features(
            scan_corpus(root, labels=labels),
            sc.data.features,
            cache_dir=sc.data.cache_dir,
            threads=enc_threads,
        )
        train = fs.split("train")
        test = _held_out(sc, fs, root, labels, enc_threads, seed)
        self.test = test
        self.n_classes = len(fs.label_names)
        self._reference_set = _reference_set(sc, fs, seed)
        #: Per audited node: mislabelled canary clips, half trained on (by a seeded coin).
        parts, held, self.canary_in, self.canary_out = _node_parts(sc, train, self.n_classes, seed)
        #: Per audited node: clips of its own set aside, never trained on (non-members).
        self.audit_out = {i: train.subset(h) for i, h in enumerate(held) if len(h)}
        self._public = test
        #: Per node: its clips in arrival order and when each arrives (virtual seconds).
        self._arrivals = _arrival_times(sc, parts, seed) if sc.data.arrival else None
        self._shown: dict[int, int] = {}
        self.clips_per_node = [len(p) for p in parts]
        self.retired: dict[int, int] = {}
        self.now = 0.0
        self.clock: Callable[[], float] | None = None
        flippers = label_flippers(sc)
        model_cfg = ModelConfig(
            name=sc.learner.model, width=sc.learner.width, pooling=sc.learner.pooling
        )
        privacy = node_privacy(sc)
        self._sc, self._seed, self._model_cfg, self._privacy = sc, seed, model_cfg, privacy
        workers = sc.learner.workers if own is None else 1
        if not self.per_node_trainers:
            workers = 1  # one batched tensor program; no per-node processes
        if own is None:
            own = list(range(len(parts))) if workers == 1 else [0]  # node 0: genesis/schema
        self.trainers: dict[int, LocalTrainer] = {}
        self._local: dict[int, FeatureSet] = {}
        for i in own:
            local = self._node_set(train, parts[i], i, flip=i in flippers)
            self._local[i] = local
            if not self.per_node_trainers and i != own[0]:
                continue  # the batched learner keeps its own state (node 0's trainer: schema)
            self.trainers[i] = LocalTrainer(
                self._visible(i, 0.0),
                model_cfg=model_cfg,
                feature_cfg=sc.data.features,
                training=sc.learner.training,
                privacy=privacy,
                seed=seed * 100_003 + i,
                genesis_seed=seed,
                noise_seed=seed * 100_003 + i,  # reproducible runs; a real node uses OS entropy
                task=task.ident if task else None,
                allow_empty=self._arrivals is not None,
            )
        first = self.trainers[own[0]]
        self.genesis = first.get_flat()
        self.schema = bytes.fromhex(first.schema)
        self.schema_card = first.schema_card
        self._steps = sc.learner.training.local_steps
        self._first = first  # scores any node's weights on a spare model copy
        self._eps: dict[int, float | None] = {}
        self._pool = WorkerPool(sc, seed, len(parts), workers) if workers > 1 else None

    def _node_set(
        self, train: FeatureSet, idx: npt.NDArray[np.int64], i: int, *, flip: bool
    ) -> FeatureSet:
        """Node ``i``'s training clips: its share, its inserted canaries, labels flipped for a
        label-flipping attacker."""
        import torch

        extra = [self.canary_in[i]] if i in self.canary_in else []
        local = FeatureSet.concat([train.subset(idx), *extra])
        if flip:
            local.labels = torch.as_tensor(flip_labels(local.labels.numpy(), self.n_classes))
        return local

    def train(self, i: int, model: Vec) -> tuple[Vec, int, DpInfo]:
        """K DP-SGD steps of node ``i``'s own trainer, from the merged model."""
        return self.train_many([(i, model)])[i]

    def train_many(
        self, jobs: list[tuple[int, Vec]], now: float | None = None
    ) -> dict[int, tuple[Vec, int, DpInfo]]:
        """Several nodes' bursts (in parallel when there are worker processes), each on the
        clips that have reached it by virtual time ``now`` (default: the simulation clock)."""
        if now is None:
            now = self.clock() if self.clock is not None else self.now
        self.now = now
        if self._pool is not None:
            out, retired = self._pool.run(jobs, now)
            self.retired.update(retired)
        else:
            out = {}
            for i, model in jobs:
                trainer = self.trainers[i]
                if self._arrivals is not None:
                    n = self._arrived(i, now)
                    if n != self._shown.get(i, -1):
                        trainer.update_data(self._visible(i, now))
                fit = trainer.fit(model, self._steps)
                dp = DpInfo(fit.report.epsilon, fit.report.delta)
                out[i] = (fit.weights, fit.samples, dp)
                self.retired[i] = trainer.retired_clips
        for i, (_, _, dp) in out.items():
            self._eps[i] = dp.example_epsilon
        return out

    def _arrived(self, i: int, now: float) -> int:
        """How many of node ``i``'s clips have arrived by ``now``."""
        if self._arrivals is None:
            return self.clips_per_node[i]
        return int(np.searchsorted(self._arrivals[i][1], now, side="right"))

    def _visible(self, i: int, now: float) -> FeatureSet:
        """Node ``i``'s clips that have arrived by ``now`` (all without an arrival model)."""
        local = self._local[i]
        if self._arrivals is None:
            return local
        n = self._arrived(i, now)
        self._shown[i] = n
        return local.subset(np.sort(self._arrivals[i][0][:n]))

    def data_stats(self, nodes: Iterable[int] | None = None) -> dict[str, int]:
        """Clips arrived at the given nodes (default all, honest and Byzantine) so far, and
        clips retired: sums, so partitions' figures add up."""
        now = self.clock() if self.clock is not None else self.now
        which = list(range(len(self.clips_per_node)) if nodes is None else nodes)
        return {
            "clips_present": sum(self._arrived(i, now) for i in which),
            "clips_total": sum(self.clips_per_node[i] for i in which),
            "clips_retired": sum(self.retired.get(i, 0) for i in which),
        }

    def evaluate(self, models: dict[int, Vec]) -> dict[int, float]:
        """Held-out accuracy of every given model."""
        if not models:
            return {}
        if self._pool is not None:
            return self._pool.evaluate(models)
        test = self._scoring_set
        return {
            k: self._first.evaluate_weights(models[k], test)["accuracy"] for k in sorted(models)
        }

    @cached_property
    def _scoring_set(self) -> FeatureSet:
        """The held-out set as the scorer's model reads it: with fixed pooling, the clips
        pooled once (a fixed function of each clip, row for row the same as pooling inside
        every forward), not once per scored model — that pooling was ~12% of a 2,000-node run."""
        from flava_p2p.learning.models import pool_once

        pooled = pool_once(self._first.model, self.test.features)
        return self.test if pooled is None else dataclasses.replace(self.test, features=pooled)

    def audit(self, models: dict[int, Vec], max_nodes: int, delta: float) -> dict[str, Any]:
        """Membership inference against each audited node's model (see learning/audit.py)."""
        from flava_p2p.learning.audit import attack_figures, per_example_loss
        from flava_p2p.learning.models import build_model

        nodes = [i for i in sorted(models) if i in self.audit_out and i in self._local]
        nodes = nodes[:max_nodes]
        if not nodes:
            return {"skipped": "no node has audit clips here (audit.holdout_fraction: 0, "
                    "or the nodes live in worker processes)"}  # fmt: skip
        # A plain model of the same architecture (the trainer's may carry Opacus hooks).
        _, _, n_feat, n_frames = self._public.features.shape
        net = build_model(self._model_cfg, self.n_classes, int(n_feat), int(n_frames))
        reference = self._reference_model(net)
        loss_in: list[npt.NDArray[np.float64]] = []
        loss_out: list[npt.NDArray[np.float64]] = []
        cal_in: list[npt.NDArray[np.float64]] = []
        cal_out: list[npt.NDArray[np.float64]] = []
        for i in nodes:
            for fs, loss, cal in ((self._local[i], loss_in, cal_in),
                                  (self.audit_out[i], loss_out, cal_out)):  # fmt: skip
                own = per_example_loss(net, models[i], fs.features, fs.labels)
                ref = per_example_loss(net, reference, fs.features, fs.labels)
                loss.append(-own)
                cal.append(ref - own)
        cat = np.concatenate
        can_in: list[npt.NDArray[np.float64]] = []
        can_out: list[npt.NDArray[np.float64]] = []
        for i in nodes:
            for group, out in ((self.canary_in, can_in), (self.canary_out, can_out)):
                if i in group and len(group[i]):
                    c = group[i]
                    out.append(-per_example_loss(net, models[i], c.features, c.labels))
        canaries = (
            attack_figures(cat(can_in), cat(can_out), delta).as_dict()
            if can_in and can_out
            else None
        )
        return {
            "canaries": canaries,
            "nodes": len(nodes),
            "unit": "example-level: one clip in or out of one node's training set",
            "loss_threshold": attack_figures(cat(loss_in), cat(loss_out), delta).as_dict(),
            "calibrated": attack_figures(cat(cal_in), cat(cal_out), delta).as_dict(),
        }

    def reference_scorer(self) -> Callable[[Vec], float] | None:
        """Loss of a model on the public reference set (the corpus' validation speakers, never
        trained on, never evaluated on), for the reference screen; None without such clips."""
        ref = self._reference_set
        if ref is None:
            return None
        from flava_p2p.learning.reference import reference_loss_fn

        return reference_loss_fn(self._model_cfg, self.n_classes, ref)

    def reference_anchor(self) -> Callable[[Vec], Vec] | None:
        """The public anchor (``gossip.anchor_steps`` SGD steps on the reference set after
        every merge); None without reference clips or with the anchor off."""
        ref, g = self._reference_set, self._sc.gossip
        if ref is None or g.anchor_steps == 0:
            return None
        from flava_p2p.learning.reference import reference_anchor_fn

        return reference_anchor_fn(
            self._model_cfg, self.n_classes, ref, g.anchor_steps, g.anchor_lr
        )

    def _reference_model(self, net: Any) -> Vec:
        """The attacker's reference: a head trained without DP on public clips (the held-out
        test speakers, whom no node trains on), from the same genesis."""
        import torch

        torch.nn.utils.vector_to_parameters(torch.as_tensor(self.genesis.copy()), net.parameters())
        net.train(True)
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        x, y = self._public.features, self._public.labels
        gen = torch.Generator().manual_seed(self._seed)
        for _ in range(300):
            idx = torch.randint(0, len(y), (min(128, len(y)),), generator=gen)
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        net.train(False)
        ref: Vec = torch.nn.utils.parameters_to_vector(net.parameters()).detach().numpy().copy()
        return ref

    def epsilon(self, i: int) -> float | None:
        """ε of the node's ledger after its last burst (example-level); 0 before any."""
        if i in self._eps:
            return self._eps[i]
        return 0.0 if self.trainers[next(iter(self.trainers))].ledger else None

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.close()


def _held_out(
    sc: Scenario,
    fs: FeatureSet,
    root: Path,
    labels: list[str] | None,
    enc_threads: int,
    seed: int,
) -> FeatureSet:
    """The clips every node is scored on: another corpus, or the corpus' held-out speakers."""
    from flava_p2p.speech.dataset import load_features, scan_corpus

    if sc.data.eval_corpus is not None:
        test = load_features(
            scan_corpus(sc.data.eval_corpus, labels=labels),
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
    return test


def _label_subsets(
    parts: list[npt.NDArray[np.int64]],
    labels: npt.NDArray[np.int64],
    n_classes: int,
    sc: Scenario,
    seed: int,
) -> list[npt.NDArray[np.int64]]:
    """Each node keeps only its clips of a seeded random ``label_fraction`` of the labels."""
    k = max(1, round(sc.data.label_fraction * n_classes))
    rng = np.random.default_rng([seed, 7])
    out = []
    for part in parts:
        keep = rng.choice(n_classes, size=k, replace=False)
        out.append(part[np.isin(labels[part], keep)])
    return out


def _arrival_times(
    sc: Scenario, parts: list[npt.NDArray[np.int64]], seed: int
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]:
    """Per node: its clip indices (into its own part) in arrival order, and arrival times."""
    arr = sc.data.arrival
    assert arr is not None
    out = []
    for i, part in enumerate(parts):
        rng = np.random.default_rng([seed, 11, i])
        n = len(part)
        order = rng.permutation(n)
        first = round(arr.initial * n)
        times = np.zeros(n)
        if arr.rate is not None:
            times[first:] = np.cumsum(rng.exponential(1 / arr.rate, size=n - first))
        else:
            assert arr.schedule is not None
            pts = [(0.0, arr.initial), *arr.schedule]
            for k in range(first, n):
                need = (k + 1) / n  # the fraction present once clip k has arrived
                times[k] = next((t for t, f in pts if f >= need - 1e-12), np.inf)
        out.append((order.astype(np.int64), times))
    return out


def _partition(
    sc: Scenario, speakers: list[str], labels: npt.NDArray[np.int64], seed: int
) -> list[npt.NDArray[np.int64]]:
    from flava_p2p.speech import partition

    n, data = sc.nodes, sc.data
    byzantine = sc.byzantine_nodes()
    if sc.byzantine.same_host and byzantine:
        # Sybils: the honest nodes split the data as if alone; each Sybil copies one share.
        honest = sc.model_copy(update={"nodes": n - len(byzantine)})
        shares = _partition(honest.model_copy(update={"byzantine": ByzantineSpec()}), speakers,
                            labels, seed)  # fmt: skip
        out, sybils = iter(shares), set(byzantine)
        return [shares[i % len(shares)] if i in sybils else next(out) for i in range(n)]
    if data.partition == "speaker":
        if data.clips_per_node is not None:
            return partition.fixed_size(speakers, n, data.clips_per_node, seed=seed)
        # More nodes than speakers: each speaker's clips are split over several nodes.
        return partition.by_speaker(speakers, n_parts=n, seed=seed)
    if data.partition == "iid":
        if data.quantity_skew is not None:
            return partition.quantity_skewed(len(labels), n, data.quantity_skew, seed=seed)
        return partition.iid(len(labels), n, seed=seed)
    return partition.dirichlet(labels, n, sc.data.alpha, seed=seed)


def _reference_set(sc: Scenario, fs: FeatureSet, seed: int) -> FeatureSet | None:
    """Up to 20 clips per label of the corpus' validation speakers (seeded draw), unless they
    are part of the evaluation (``data.eval_split: heldout``) or screening is off."""
    unused = sc.gossip.max_reference_loss is None and sc.gossip.anchor_steps == 0
    if unused or sc.data.eval_split == "heldout":
        return None
    val = [i for i, split in enumerate(fs.splits) if split == "validation"]
    if not val:
        return None
    rng = np.random.default_rng([seed, 0x5EF])
    labels = fs.labels.numpy()
    pick: list[int] = []
    for c in range(len(fs.label_names)):
        of_c = [i for i in val if labels[i] == c]
        pick += [int(i) for i in rng.permutation(of_c)[:20]]
    return fs.subset(sorted(pick)) if pick else None


def _canaries(
    sc: Scenario,
    train: FeatureSet,
    held: list[npt.NDArray[np.int64]],
    n_classes: int,
    seed: int,
) -> tuple[dict[int, FeatureSet], dict[int, FeatureSet], list[npt.NDArray[np.int64]]]:
    """``audit.canaries`` of each node's set-aside clips, given a wrong label (a clip the model
    can only fit by memorising it), each trained on or not by a fair seeded coin. Returns the
    inserted and withheld canaries per node and what is left of the set-aside clips."""
    import torch

    if sc.audit.canaries <= 0 or n_classes < 2:
        return {}, {}, held
    rng = np.random.default_rng([seed, 0xCA9A])
    inside: dict[int, FeatureSet] = {}
    outside: dict[int, FeatureSet] = {}
    left = []
    for i, h in enumerate(held):
        pick = rng.permutation(h)[: min(sc.audit.canaries, len(h) // 2)]  # keep non-members
        left.append(np.setdiff1d(h, pick))
        if len(pick) < 2:
            continue
        fs = train.subset(np.sort(pick))
        shift = rng.integers(1, n_classes, len(fs))
        fs.labels = torch.as_tensor((fs.labels.numpy() + shift) % n_classes)
        coin = rng.random(len(fs)) < 0.5
        inside[i] = fs.subset(np.flatnonzero(coin))
        outside[i] = fs.subset(np.flatnonzero(~coin))
    return inside, outside, left


def _node_parts(
    sc: Scenario, train: FeatureSet, n_classes: int, seed: int
) -> tuple[
    list[npt.NDArray[np.int64]],
    list[npt.NDArray[np.int64]],
    dict[int, FeatureSet],
    dict[int, FeatureSet],
]:
    """Each node's training clips, the clips set aside for the privacy audit (empty unless
    ``audit.holdout_fraction`` > 0), and its inserted and withheld canaries."""
    labels = train.labels.numpy()
    parts = _partition(sc, train.speakers, labels, seed)
    if sc.data.label_fraction < 1:
        parts = _label_subsets(parts, labels, n_classes, sc, seed)
    if sc.audit.holdout_fraction <= 0:
        return parts, [np.zeros(0, np.int64) for _ in parts], {}, {}
    parts, held = _audit_holdout(parts, sc.audit.holdout_fraction, seed)
    inside, outside, held = _canaries(sc, train, held, n_classes, seed)
    return parts, held, inside, outside


def _audit_holdout(
    parts: list[npt.NDArray[np.int64]], fraction: float, seed: int
) -> tuple[list[npt.NDArray[np.int64]], list[npt.NDArray[np.int64]]]:
    """Split every node's clips at random into (trained on, set aside for the audit)."""
    rng = np.random.default_rng([seed, 0xA0D17])
    keep, held = [], []
    for p in parts:
        out = rng.random(len(p)) < fraction
        if len(p) >= 2 and out.all():
            out[rng.integers(len(p))] = False  # a node always keeps something to train on
        keep.append(p[~out])
        held.append(p[out])
    return keep, held
