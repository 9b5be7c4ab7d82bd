"""Local trainer: DP-SGD (Opacus) or plain SGD behind one interface.

One PrivacyEngine for the trainer's lifetime (the model is wrapped exactly once). σ is chosen
once from the target (ε, δ) over the planned total steps. Batches are Poisson-sampled. The
privacy ledger is charged *before* each burst of steps and, when a checkpoint path is given,
persisted with the model before and after it, so ε after any crash is ≥ ε before it.
"""

from __future__ import annotations

import math
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flava_p2p.config import FeatureConfig, ModelConfig, PrivacyConfig, TrainingConfig
from flava_p2p.errors import FlavaError
from flava_p2p.learning.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from flava_p2p.learning.ledger import BudgetState, PrivacyLedger
from flava_p2p.learning.linear_dp import clipped_noised_grads
from flava_p2p.learning.metrics import classification_report
from flava_p2p.learning.models import (
    EmbeddingHead,
    build_model,
    pool_once,
    predict_classes,
    schema_card,
    schema_hash,
)
from flava_p2p.speech.dataset import FeatureSet
from flava_p2p.speech.features import spec_augment, time_shift

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TrainReport:
    """What one call to :meth:`LocalTrainer.train` did."""

    steps: int
    examples: int
    loss: float
    epsilon: float | None
    delta: float | None
    budget: BudgetState
    seconds: float


@dataclass(frozen=True)
class FitResult:
    """What :meth:`LocalTrainer.fit` returns: the trained weights and what it cost."""

    weights: npt.NDArray[np.float32]
    samples: int
    """Examples this learner holds (the weight its model gets in peers' merges)."""
    report: TrainReport


def genesis_model(
    model_cfg: ModelConfig, n_classes: int, n_features: int, n_frames: int, seed: int
) -> nn.Module:
    """The model every node starts from: same seed → bit-identical weights on every node."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(model_cfg, n_classes, n_features, n_frames)


class LocalTrainer:
    """Trains one node's model on its own examples; DP on or off, same interface."""

    def __init__(
        self,
        train_set: FeatureSet,
        *,
        model_cfg: ModelConfig,
        feature_cfg: FeatureConfig,
        training: TrainingConfig,
        privacy: PrivacyConfig,
        seed: int = 0,
        genesis_seed: int | None = None,
        noise_seed: int | None = None,
        checkpoint_path: str | Path | None = None,
        ema_decay: float | None = None,
        closed_form_dp: bool = True,
        task: str | None = None,
        allow_empty: bool = False,
    ) -> None:
        if len(train_set) == 0 and not allow_empty:
            raise FlavaError("no training examples: the node's data folder has no usable audio.")
        self.training = training
        self.privacy = privacy
        self.feature_cfg = feature_cfg
        self.model_cfg = model_cfg
        self.label_names = list(train_set.label_names)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self._budget_warned = False
        self.n_train = len(train_set)
        _, _, n_feat, n_frames = train_set.features.shape
        self.model = genesis_model(
            model_cfg,
            len(self.label_names),
            n_feat,
            n_frames,
            seed if genesis_seed is None else genesis_seed,
        )
        self.task = task
        self.schema = schema_hash(model_cfg, feature_cfg, self.label_names, self.model, task)
        self.schema_card = schema_card(model_cfg, feature_cfg, self.label_names, self.model, task)
        self._manual_lr = False
        self._spare: nn.Module | None = None
        self._aug_gen = torch.Generator().manual_seed(seed + 1)
        self._data_gen = torch.Generator().manual_seed(seed + 2)
        self._closed_form_wanted = closed_form_dp and privacy.enabled
        self._prepare_inputs(train_set, self._closed_form_wanted)
        self.n_train = len(self._y)  # identical files count once
        self._batch = max(1, min(training.batch_size, self.n_train))
        # Batches are drawn by indexing the tensors directly: a DataLoader fetches and collates
        # example by example, which cost more than the whole step of a small head.
        self._order = torch.zeros(0, dtype=torch.int64)
        self._cursor = 0
        optimizer = torch.optim.SGD(
            self.model.parameters(), lr=training.lr, momentum=training.momentum
        )
        self.ledger: PrivacyLedger | None = None
        self._trainable: nn.Module = self.model
        #: Poisson sampling rate q under DP: each clip joins each step's batch independently.
        #: Fixed for the node's life by the first data it trains on (as Opacus derives it).
        self.sample_rate = 1 / math.ceil(max(self.n_train, 1) / self._batch)
        if privacy.enabled:
            from opacus import PrivacyEngine

            # Real nodes draw DP noise from OS entropy: a noise seed an attacker could learn from
            # the config would void the guarantee. Simulations pass one for reproducibility.
            gen = torch.Generator().manual_seed(
                noise_seed if noise_seed is not None else secrets.randbits(63)
            )
            # Opacus' own accountant is never consulted (the ledger is the source of truth and
            # sets σ); it only needs a name Opacus knows.
            opacus_acc = "rdp" if privacy.accountant == "pld" else privacy.accountant
            self._engine = PrivacyEngine(accountant=opacus_acc)
            # Opacus derives q and the expected batch size from a loader; batches themselves
            # come from _poisson_batch, which samples exactly as Opacus' own Poisson sampler
            # does (one uniform draw per example, kept when below q).
            # (Its loader only tells it q; a node still waiting for clips plans later.)
            n_plan = max(self.n_train, 1)
            loader = DataLoader(
                TensorDataset(torch.zeros(n_plan, 1), torch.zeros(n_plan)), batch_size=self._batch
            )
            self._trainable, optimizer, _ = self._engine.make_private(
                module=self.model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=1.0,  # set from the ledger once it is planned
                max_grad_norm=privacy.max_grad_norm,
                poisson_sampling=True,
                noise_generator=gen,
            )
            # The ledger is the single source of truth; the engine's own hook would count twice.
            optimizer.step_hook = None
        self.optimizer = optimizer
        self.criterion = nn.CrossEntropyLoss()
        # Exponential moving average of the weights (De et al. 2022): pure post-processing of the
        # DP-SGD iterates, so it costs no privacy, and it averages out much of the step noise.
        self._init_ema(ema_decay)
        if self.checkpoint_path and self.checkpoint_path.exists():
            self._restore(self.checkpoint_path)
        if privacy.enabled and self.ledger is None and self.n_train > 0:
            self.ledger = self._plan_ledger()
        if self.ledger is not None:
            self.ledger.admit(self._clips)
        if self.checkpoint_path and not self.checkpoint_path.exists():
            self.save()  # from the start there is always a loadable checkpoint (ε = 0)

    def _init_ema(self, ema_decay: float | None) -> None:
        self.ema_decay = ema_decay
        self._ema: list[torch.Tensor] | None = None
        self._ema_updates = 0
        if ema_decay is not None:
            if not 0 < ema_decay < 1:
                raise FlavaError(f"ema_decay must be in (0, 1), got {ema_decay}.")
            self._ema = [p.detach().clone() for p in self.model.parameters()]

    def _plan_ledger(self) -> PrivacyLedger:
        """Fix σ, q and the gradient divisor for the node's life, from its first clips."""
        self.sample_rate, expected = sampling_plan(
            self.n_train, self.training.batch_size, self.privacy
        )
        self.ledger = PrivacyLedger.plan(self.privacy, self.sample_rate, expected)
        self._sync_optimizer()
        return self.ledger

    def _sync_optimizer(self) -> None:
        """The DP optimizer takes σ and the divisor from the ledger (the source of truth)."""
        if self.ledger is None:
            return
        opt: Any = self.optimizer
        opt.noise_multiplier = self.ledger.noise_multiplier
        if self.ledger.expected_batch > 0:
            opt.expected_batch_size = self.ledger.expected_batch
        else:  # a ledger from before the divisor was recorded: record the one in force
            self.ledger.expected_batch = float(opt.expected_batch_size)
        self.sample_rate = self.ledger.sample_rate

    def update_data(self, train_set: FeatureSet) -> int:
        """Train on ``train_set`` from the next step on (clips added or removed while running).

        Returns how many clips the ledger had never seen (they start with a fresh budget; a
        clip seen before keeps its age). σ and q stay as planned."""
        if train_set.label_names != self.label_names:
            raise FlavaError(
                f"new data has labels {train_set.label_names}, the model {self.label_names}"
            )
        self._prepare_inputs(train_set, self._closed_form_wanted)
        self.n_train = len(self._y)
        self._batch = max(1, min(self.training.batch_size, self.n_train))
        self._order, self._cursor = torch.zeros(0, dtype=torch.int64), 0
        if self.privacy.enabled and self.ledger is None and self.n_train > 0:
            self.ledger = self._plan_ledger()
        return self.ledger.admit(self._clips) if self.ledger is not None else 0

    def _prepare_inputs(self, train_set: FeatureSet, closed_form: bool) -> None:
        """Training tensors, pooled once when the head's pooling is fixed; decide the DP path."""
        self._x, self._y = train_set.features, train_set.labels
        #: Each row's clip id (SHA-256 of the file) for per-clip accounting; empty when the
        #: set carries none (then every clip counts as present for every step).
        self._clips: list[bytes] = list(train_set.digests)
        keep = distinct_clip_rows(self._clips)
        if keep is not None:
            log.info("identical clips train once", rows=len(self._clips), clips=len(keep))
            self._x, self._y = self._x[keep], self._y[keep]
            self._clips = [self._clips[i] for i in keep.tolist()]
        # Heads over a frozen encoder with fixed pooling see each clip as one pooled vector:
        # pool once here rather than every step (a fixed function of one clip: no privacy cost).
        pooled = pool_once(self.model, self._x)
        if pooled is not None:
            self._x = pooled
        #: Linear heads under DP take the closed-form step (linear_dp.py), equal to Opacus'.
        self.closed_form_dp = bool(
            closed_form
            and pooled is not None
            and isinstance(self.model, EmbeddingHead)
            and self.model.is_linear
        )
        # ‖[x_i, 1]‖ per example: fixed, so computed once for the closed-form clipping.
        self._input_norms = (self._x.pow(2).sum(1) + 1.0).sqrt() if self.closed_form_dp else None
        self._last_idx = torch.zeros(0, dtype=torch.int64)
        self._poisson = torch.zeros((0, self.n_train), dtype=torch.bool)

    # ----------------------------------------------------------------- training
    def train(self, k_steps: int) -> TrainReport:
        """Take up to ``k_steps`` optimizer steps (fewer if the privacy budget runs out)."""
        start = time.perf_counter()
        if self.n_train == 0:
            return self._report(0, 0, math.nan, start)
        k, first_step = k_steps, 0.0
        if self.ledger is not None:
            k, first_step = self._spend(k_steps)
            if k == 0:
                return self._report(0, 0, math.nan, start)
        self._trainable.train()
        total_loss, examples = 0.0, 0
        for j in range(k):
            if self.ledger is not None:
                self._schedule_lr(first_step + j)
            x, y = self._next_batch(j)
            n = len(x)
            x, y = self._augment(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            if self.closed_form_dp:
                total_loss += self._closed_form_step(x, y)
                examples += n
            elif n:
                loss = self.criterion(self._trainable(x), y)
                loss.backward()
                if self.ledger is not None and self.training.augment_multiplicity > 1:
                    self._average_multiplicity(n)
                total_loss += float(loss.detach()) * n
                examples += n
            else:
                self._zero_sample_grads()
            if not self.closed_form_dp:
                self.optimizer.step()
            self._update_ema()
        self.save()
        return self._report(k, examples, total_loss / max(examples, 1), start)

    def _spend(self, wanted: int) -> tuple[int, float]:
        """Charge the ledger for the next burst (before it runs) and draw its Poisson batches.

        Returns the steps to take (0 when every clip has retired) and the schedule position
        of the first one."""
        assert self.ledger is not None
        clips = self._clips or None
        k = self.ledger.allowed_steps(wanted, clips)
        if k == 0:
            if not self._budget_warned:
                self._budget_warned = True  # once: a node keeps asking every round
                log.warning(
                    "privacy budget exhausted: every clip has retired; refusing to train "
                    "until new clips arrive",
                    epsilon=self.ledger.epsilon,
                    target_epsilon=self.ledger.target_epsilon,
                    delta=self.ledger.delta,
                    steps=self.ledger.steps,
                )
            return 0, 0.0
        self._budget_warned = False
        remaining = self._remaining(clips)
        # The schedule follows the age of the clips in training (fresh clips: larger steps).
        first_step = float(self._schedule_age(clips))
        self.ledger.charge(k, clips)
        self.save()  # ε is on disk before any step that spends it
        # The whole burst's Poisson draws at once: the same numbers as one draw per step
        # (the generator fills them in order), one call instead of k.
        self._poisson = torch.rand(k, self.n_train, generator=self._data_gen) < self.sample_rate
        if remaining is not None and int(remaining.min()) < k:
            # A clip is sampled only in the steps its budget still covers, then retires.
            self._poisson &= torch.arange(k).unsqueeze(1) < remaining.unsqueeze(0)
        return k, first_step

    def _remaining(self, clips: list[bytes] | None) -> torch.Tensor | None:
        """Steps each row may still be sampled in (None: untracked, all alike)."""
        if clips is None or self.ledger is None:
            return None
        return torch.tensor([self.ledger.remaining(c) for c in clips], dtype=torch.int64)

    def _schedule_age(self, clips: list[bytes] | None) -> float:
        """Mean age of the node's clips, retired ones included (the node's steps when
        untracked): how much of the data's total budget is spent. New clips lower it a little;
        counting only the live clips would restart the schedule — and its large, noisy steps —
        every time a cohort retires."""
        assert self.ledger is not None
        if clips is None:
            return self.ledger.steps
        return sum(self.ledger.ages.get(c, 0) for c in clips) / max(1, len(clips))

    def _closed_form_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One DP-SGD step of a linear head without Opacus' hooks (same math, same noise)."""
        assert isinstance(self.model, EmbeddingHead) and isinstance(self.model.body, nn.Linear)
        opt: Any = self.optimizer  # Opacus' DPOptimizer: σ, C, E[B] and the noise generator
        loss = clipped_noised_grads(
            self.model.body,
            x,
            y,
            max_grad_norm=opt.max_grad_norm,
            noise_std=opt.noise_multiplier * opt.max_grad_norm,
            expected_batch_size=opt.expected_batch_size,
            generator=opt.generator,
            input_norms=None if self._input_norms is None else self._input_norms[self._last_idx],
        )
        opt.original_optimizer.step()
        return loss

    def _schedule_lr(self, step: float) -> None:
        """The node's lifetime schedule (cosine over the planned DP steps; else constant).

        Callers that drive their own schedule (``set_lr``) switch this off."""
        if self._manual_lr or self.ledger is None or self.training.lr_schedule != "cosine":
            return
        total = max(1, self.ledger.planned_steps)
        frac = min(1.0, step / total)
        for group in self.optimizer.param_groups:
            group["lr"] = self.training.lr * 0.5 * (1 + math.cos(math.pi * frac))

    def set_lr(self, lr: float) -> None:
        """Set the learning rate from now on, replacing the built-in schedule (post-processing
        for DP)."""
        self._manual_lr = True
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _next_batch(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``j`` of the burst: its Poisson sample under DP (the accountant's assumption);
        shuffled epochs otherwise."""
        if self.ledger is not None:
            idx = self._poisson[j].nonzero().view(-1)
        else:
            if self._cursor >= len(self._order):
                self._order = torch.randperm(self.n_train, generator=self._data_gen)
                self._cursor = 0
            idx = self._order[self._cursor : self._cursor + self._batch]
            self._cursor += self._batch
        self._last_idx = idx
        return self._x[idx], self._y[idx]

    def _augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply augmentation; with multiplicity K, return K augmented copies of each example.

        Copies are interleaved (example 0's K copies first) so that the per-sample gradients can
        be folded back to one per example with a reshape.
        """
        if len(x) == 0 or x.dim() != 4:  # pooled embeddings: nothing to shift or mask
            return x, y
        k = self.training.augment_multiplicity
        if k > 1:
            x = time_shift(x.repeat_interleave(k, dim=0), self._aug_gen)
            y = y.repeat_interleave(k)
        if self.training.spec_augment:
            x = spec_augment(x, self._aug_gen)
        return x, y

    def _average_multiplicity(self, n: int) -> None:
        """Fold the K copies' per-sample gradients into one per example, before clipping.

        Each example still contributes one clipped gradient, so sensitivity and the accountant
        are exactly as without multiplicity.
        """
        k = self.training.augment_multiplicity
        for p in self.model.parameters():
            gs = getattr(p, "grad_sample", None)
            if gs is not None:
                p.grad_sample = gs.view(n, k, *gs.shape[1:]).mean(1)  # type: ignore[attr-defined]

    def _zero_sample_grads(self) -> None:
        """An empty Poisson batch still gets a noise-only step, as the accounting assumes."""
        for p in self.model.parameters():
            p.grad_sample = torch.zeros((0, *p.shape))  # type: ignore[attr-defined]

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self._ema is None or self.ema_decay is None:
            return
        self._ema_updates += 1
        # Warm-up (as in TensorFlow's ExponentialMovingAverage with num_updates): early on the
        # average must not be dominated by the random initial weights.
        decay = min(self.ema_decay, (1 + self._ema_updates) / (10 + self._ema_updates))
        for avg, p in zip(self._ema, self.model.parameters(), strict=True):
            avg.mul_(decay).add_(p.detach(), alpha=1 - decay)

    def use_ema_weights(self) -> None:
        """Replace the weights by their moving average (no-op without ``ema_decay``)."""
        if self._ema is None:
            return
        with torch.no_grad():
            for avg, p in zip(self._ema, self.model.parameters(), strict=True):
                p.copy_(avg)

    def _report(self, steps: int, examples: int, loss: float, start: float) -> TrainReport:
        led = self.ledger
        return TrainReport(
            steps,
            examples,
            loss,
            led.epsilon if led else None,
            led.delta if led else None,
            self.budget_state,
            time.perf_counter() - start,
        )

    @property
    def budget_state(self) -> BudgetState:
        """``disabled`` without DP; ``waiting_for_data`` without clips; ``budget_exhausted``
        once every clip has retired."""
        if self.n_train == 0:
            return "waiting_for_data"
        return self.ledger.state_for(self._clips or None) if self.ledger else "disabled"

    @property
    def retired_clips(self) -> int:
        """Clips in the current data whose budget is spent (never sampled again)."""
        return self.ledger.retired(self._clips) if self.ledger and self._clips else 0

    # ------------------------------------------------- the learner interface
    def fit(self, weights: npt.NDArray[np.float32], steps: int) -> FitResult:
        """Train up to ``steps`` steps starting from ``weights`` (the merged model).

        The one learner interface the real node and the simulator share: load weights, fit,
        read weights back (``evaluate_weights`` scores any weights without touching ours).
        """
        self.set_flat(weights)
        report = self.train(steps)
        return FitResult(self.get_flat(), self.n_train, report)

    def evaluate_weights(
        self, weights: npt.NDArray[np.float32], fs: FeatureSet
    ) -> dict[str, float]:
        """Accuracy and macro-F1 on ``fs`` of other weights (e.g. a peer's model), computed on
        a spare copy of the model so this trainer's own weights and optimizer stay as they are."""
        if self._spare is None:
            import copy

            self._spare = copy.deepcopy(self.model)
            self._spare.train(False)
        flat = torch.as_tensor(np.asarray(weights, dtype=np.float32))
        with torch.no_grad():
            offset = 0
            for p in self._spare.parameters():
                p.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        pred = predict_classes(self._spare, fs.features).numpy()
        return classification_report(fs.labels.numpy(), pred, len(self.label_names))

    # ----------------------------------------------------------------- weights
    def get_flat(self) -> npt.NDArray[np.float32]:
        """All parameters as one float32 vector (model.parameters() order)."""
        with torch.no_grad():
            return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()]).numpy()

    def set_flat(self, vec: npt.NDArray[np.float32]) -> None:
        """Load a flat vector into the parameters in place (Opacus keeps its references)."""
        flat = torch.as_tensor(np.asarray(vec, dtype=np.float32))
        n = sum(p.numel() for p in self.model.parameters())
        if flat.numel() != n:
            raise ValueError(f"flat vector has {flat.numel()} values, model has {n}")
        with torch.no_grad():
            offset = 0
            for p in self.model.parameters():
                p.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()

    # -------------------------------------------------------------- evaluation
    def evaluate(self, fs: FeatureSet) -> dict[str, float]:
        """Accuracy and macro-F1 on ``fs``."""
        pred = predict_classes(self.model, fs.features).numpy()
        return classification_report(fs.labels.numpy(), pred, len(self.label_names))

    # ------------------------------------------------------------- persistence
    def meta(self) -> dict[str, Any]:
        """What a reader needs to rebuild the model: configs, labels, schema hash."""
        return {
            "model": self.model_cfg.model_dump(mode="json"),
            "features": self.feature_cfg.model_dump(mode="json"),
            "labels": self.label_names,
            "task": self.task,
            "dp_planned": self.ledger is not None,
            "schema_hash": self.schema,
        }

    def checkpoint(self) -> Checkpoint:
        """Current weights + ledger as a :class:`Checkpoint`."""
        weights = {n: p.detach().numpy().copy() for n, p in self.model.named_parameters()}
        return Checkpoint(self.meta(), weights, self.ledger)

    def save(self, path: str | Path | None = None) -> None:
        """Atomically persist model + ledger (no-op without a path)."""
        target = Path(path) if path else self.checkpoint_path
        if target is not None:
            save_checkpoint(target, self.checkpoint())

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        if ckpt.meta.get("schema_hash") != self.schema:
            raise FlavaError(
                f"{path}: checkpoint is for a different model/feature/label schema; move it "
                f"away to start fresh, or restore the config it was trained with."
            )
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(torch.from_numpy(ckpt.weights[n]))
        if self.privacy.enabled:
            if ckpt.ledger is None:
                # Only a node that never trained (no clips yet) saves no ledger, and says so.
                if ckpt.meta.get("dp_planned") is not False:
                    raise FlavaError(
                        f"{path}: checkpoint has no privacy ledger but DP is enabled; the node "
                        f"will not guess its clips' privacy spend. Restore the checkpoint or "
                        f"move it away (and the clips it trained on) to start over."
                    )
            else:
                # σ, q and the divisor were fixed for the node's life when it was planned.
                self.ledger = ckpt.ledger
                self._sync_optimizer()
        log.info(
            "resumed from checkpoint",
            path=str(path),
            epsilon=self.ledger.epsilon if self.ledger else None,
        )


def distinct_clip_rows(clips: list[bytes]) -> torch.Tensor | None:
    """Rows to keep so that identical files count as one clip (the first row of each), or
    None when every row is a distinct clip. Sampling one clip twice per step would double its
    sensitivity."""
    first = {c: i for i, c in reversed(list(enumerate(clips)))}
    if len(first) == len(clips):
        return None
    return torch.as_tensor(sorted(first.values()), dtype=torch.int64)


def sampling_plan(n_clips: int, batch_size: int, privacy: PrivacyConfig) -> tuple[float, float]:
    """(q, divisor) fixed for a node's life: ``privacy.sample_rate`` with ``batch_size`` as the
    divisor, or, as Opacus derives them, q = 1 / ceil(n / b) and divisor int(n·q)."""
    if privacy.sample_rate is not None:
        return privacy.sample_rate, float(batch_size)
    b = max(1, min(batch_size, n_clips))
    q = 1 / math.ceil(max(n_clips, 1) / b)
    return q, float(int(n_clips * q))


def set_threads(n: int) -> None:
    """Pin torch's intra-op threads (the machine has few cores; oversubscription is slow)."""
    torch.set_num_threads(max(1, n))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, n)))
