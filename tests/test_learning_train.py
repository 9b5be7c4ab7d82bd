"""DP-SGD trainer, privacy ledger crash safety, budget refusal, checkpoints and inference."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
import soundfile as sf
from structlog.testing import capture_logs

from flava_p2p.cli.node import main as node_main
from flava_p2p.cli.sim import main as sim_main
from flava_p2p.config import FeatureConfig, ModelConfig, PrivacyConfig, TrainingConfig
from flava_p2p.learning.checkpoint import CheckpointError, load_checkpoint
from flava_p2p.learning.ledger import LedgerError, PrivacyLedger
from flava_p2p.learning.trainer import LocalTrainer
from flava_p2p.speech.dataset import FeatureSet, load_features, scan_corpus

CHILD = r"""
import sys
from flava_p2p.config import *
from flava_p2p.speech.dataset import scan_corpus, load_features
from flava_p2p.learning.trainer import LocalTrainer
from flava_p2p.runtime.logs import configure_logging
configure_logging("json", "warning")
fs = load_features(scan_corpus(sys.argv[1]), FeatureConfig()).split("train")
t = LocalTrainer(fs, model_cfg=ModelConfig(width=16), feature_cfg=FeatureConfig(),
                 training=TrainingConfig(batch_size=8), privacy=PrivacyConfig(planned_steps=400),
                 checkpoint_path=sys.argv[2])
print("start", t.ledger.epsilon, flush=True)
while True:
    r = t.train(1)
    print("eps", r.epsilon, flush=True)
"""


@pytest.fixture(scope="module")
def train_set(tiny_corpus: Path) -> FeatureSet:
    return load_features(scan_corpus(tiny_corpus), FeatureConfig()).split("train")


def make_trainer(
    fs: FeatureSet, *, dp: bool = True, planned: int = 100, **kw: object
) -> LocalTrainer:
    return LocalTrainer(
        fs,
        model_cfg=ModelConfig(width=16),
        feature_cfg=FeatureConfig(),
        training=TrainingConfig(batch_size=8, lr=0.1),
        privacy=PrivacyConfig(enabled=dp, planned_steps=planned, target_epsilon=8.0),
        seed=1,
        noise_seed=2,
        **kw,  # type: ignore[arg-type]
    )


class TestTrainer:
    def test_dp_training_spends_epsilon_and_changes_weights(self, train_set: FeatureSet) -> None:
        """DP steps move the weights and the ledger's ε grows monotonically."""
        t = make_trainer(train_set)
        w0 = t.get_flat().copy()
        r1 = t.train(3)
        r2 = t.train(3)
        assert r1.steps == 3 and r2.steps == 3
        assert r1.epsilon is not None and r2.epsilon is not None
        assert 0 < r1.epsilon < r2.epsilon <= 8.0
        assert not np.allclose(w0, t.get_flat())
        assert t.budget_state == "training"

    def test_same_seeds_same_weights(self, train_set: FeatureSet) -> None:
        """With fixed data, augmentation and noise seeds a run repeats bit for bit."""
        a, b = make_trainer(train_set), make_trainer(train_set)
        a.train(4)
        b.train(4)
        assert np.array_equal(a.get_flat(), b.get_flat())

    def test_flat_roundtrip_in_place(self, train_set: FeatureSet) -> None:
        """set_flat loads weights into the live (Opacus-wrapped) model."""
        t = make_trainer(train_set)
        v = np.random.default_rng(0).normal(size=t.get_flat().size).astype(np.float32)
        t.set_flat(v)
        assert np.array_equal(t.get_flat(), v)
        with pytest.raises(ValueError, match="values"):
            t.set_flat(v[:-1])

    def test_non_private_same_interface(self, train_set: FeatureSet) -> None:
        """DP off: same calls, no ε, budget state 'disabled'."""
        t = make_trainer(train_set, dp=False)
        r = t.train(2)
        assert r.steps == 2 and r.epsilon is None and t.budget_state == "disabled"

    def test_budget_refusal(self, train_set: FeatureSet) -> None:
        """Past the planned steps training stops with a clear log line and a visible state."""
        t = make_trainer(train_set, planned=5)
        assert t.train(10).steps == 5
        with capture_logs() as logs:
            r = t.train(1)
        assert r.steps == 0 and r.budget == "budget_exhausted"
        assert t.budget_state == "budget_exhausted"
        assert any(e["event"].startswith("privacy budget exhausted") for e in logs)
        assert t.ledger is not None and t.ledger.epsilon <= 8.0 + 0.02

    def test_ema_weights_average_the_iterates_at_no_privacy_cost(
        self, train_set: FeatureSet
    ) -> None:
        """With ema_decay the averaged weights lie between the start and the last iterate and
        the ledger is exactly that of the same run without averaging."""
        plain, ema = make_trainer(train_set), make_trainer(train_set, ema_decay=0.5)
        start = ema.get_flat()
        plain.train(6)
        ema.train(6)
        last = ema.get_flat()
        np.testing.assert_array_equal(last, plain.get_flat())  # averaging never feeds back
        ema.use_ema_weights()
        averaged = ema.get_flat()
        assert not np.allclose(averaged, last)
        assert np.linalg.norm(averaged - start) < np.linalg.norm(last - start)
        assert ema.ledger is not None and plain.ledger is not None
        assert ema.ledger.epsilon == plain.ledger.epsilon

    def test_aligned_linear_trains_under_dp(self, tiny_corpus: Path) -> None:
        """The fixed-front-end model gets Opacus per-sample gradients: DP steps move it, spend ε."""
        logmel = FeatureConfig(kind="logmel")
        train_set = load_features(scan_corpus(tiny_corpus), logmel).split("train")
        t = LocalTrainer(
            train_set,
            model_cfg=ModelConfig(name="aligned_linear"),
            feature_cfg=logmel,
            training=TrainingConfig(batch_size=8, lr=0.5),
            privacy=PrivacyConfig(planned_steps=100, target_epsilon=8.0),
            seed=1,
            noise_seed=2,
        )
        n_classes = len(train_set.label_names)
        assert t.get_flat().size == (10 * 13 + 1) * n_classes  # 40 mels × 51 frames, 4×4 cells
        w0 = t.get_flat().copy()
        r = t.train(3)
        assert r.steps == 3 and r.epsilon is not None and 0 < r.epsilon <= 8.0
        assert not np.allclose(w0, t.get_flat())

    def test_prv_accountant(self, train_set: FeatureSet) -> None:
        """The PRV accountant also plans σ and reports ε."""
        t = LocalTrainer(
            train_set,
            model_cfg=ModelConfig(width=16),
            feature_cfg=FeatureConfig(),
            training=TrainingConfig(batch_size=8),
            privacy=PrivacyConfig(planned_steps=50, accountant="prv"),
            noise_seed=0,
        )
        r = t.train(2)
        assert r.epsilon is not None and r.epsilon > 0


class TestCrashSafety:
    @pytest.mark.slow  # subprocesses / long run: `scripts/test.sh --slow`
    def test_ledger_survives_kill_between_steps(self, tiny_corpus: Path, tmp_path: Path) -> None:
        """kill -9 mid-training, three times: after restore ε ≥ the last ε the process reported."""
        load_features(scan_corpus(tiny_corpus), FeatureConfig())  # warm the feature cache
        ckpt = tmp_path / "node.ckpt"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        last_reported = 0.0
        for stop_after in (3, 7, 5):
            proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(tiny_corpus), str(ckpt)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
            assert proc.stdout is not None
            try:
                start_line = proc.stdout.readline().split()
                assert start_line[0] == "start"
                assert float(start_line[1]) >= last_reported  # restored ε never went back
                for _ in range(stop_after):
                    last_reported = float(proc.stdout.readline().split()[1])
            finally:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                proc.stdout.close()
            restored = load_checkpoint(ckpt).ledger
            assert restored is not None
            assert restored.epsilon >= last_reported

    def test_corrupt_checkpoint_is_clear(self, tmp_path: Path) -> None:
        """Garbage, truncation and foreign msgpack give CheckpointError, never a crash."""
        bad = tmp_path / "x.ckpt"
        for blob in (
            b"",
            b"\x00garbage",
            msgpack.packb({"format": "other"}),
            msgpack.packb(
                {
                    "format": "flava-checkpoint",
                    "version": 1,
                    "meta": {},
                    "weights": [["w", "float32", [10**9], b""]],
                }
            ),
        ):
            bad.write_bytes(blob)
            with pytest.raises(CheckpointError):
                load_checkpoint(bad)

    def test_tampered_ledger_rejected(self) -> None:
        """A ledger claiming less ε than its history implies is refused."""
        led = PrivacyLedger("rdp", 1e-5, 8.0, 1.0, 0.1, 100)
        led.charge(10)
        d = led.to_dict()
        d["epsilon"] = led.epsilon * 2  # claims more than history: inconsistent
        with pytest.raises(LedgerError):
            PrivacyLedger.from_dict(d)
        d = led.to_dict()
        d["steps"] = 3
        with pytest.raises(LedgerError):
            PrivacyLedger.from_dict(d)
        assert PrivacyLedger.from_dict(led.to_dict()).epsilon == led.epsilon

    @pytest.mark.parametrize("tracked", [True, False])
    def test_a_concurrent_reader_never_sees_steps_ahead_of_epsilon(
        self, tracked: bool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The node charges on its training thread while the status endpoint reads the ledger:
        whatever moment the reader lands on, the ε on record covers the steps on record."""
        led = PrivacyLedger("pld", 1e-5, 8.0, 1.0, 0.1, 100)
        clips = [bytes([i]) * 32 for i in range(3)] if tracked else None
        led.admit(clips or [])
        seen: list[tuple[int, float]] = []
        compute = PrivacyLedger.epsilon_at

        def reading_while_computing(self: PrivacyLedger, age: int) -> float:
            seen.append((led.steps, led.epsilon))  # what a status read at this moment returns
            return compute(self, age)

        monkeypatch.setattr(PrivacyLedger, "epsilon_at", reading_while_computing)
        for _ in range(3):
            led.charge(2, clips)
        monkeypatch.undo()
        assert seen and led.steps == 6 and led.epsilon == led.epsilon_at(6) > 0
        for steps, eps in seen:
            assert eps >= led.epsilon_at(steps), (steps, eps)


class TestCliEndToEnd:
    @pytest.mark.parametrize("model_name", ["aligned_linear", "dscnn"])
    def test_centralized_json_then_predict(
        self,
        tiny_corpus: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        model_name: str,
    ) -> None:
        """`flava-sim centralized --json` has the documented fields; predict reads its model."""
        model = tmp_path / "m.ckpt"
        rc = sim_main(
            [
                "centralized",
                "--data",
                str(tiny_corpus),
                "--dp-epsilon",
                "8",
                "--epochs",
                "2",
                "--batch-size",
                "8",
                "--model",
                model_name,
                "--width",
                "16",
                "--threads",
                "1",
                "--save",
                str(model),
                "--json",
            ]
        )
        assert rc == 0
        out = json.loads(capsys.readouterr().out)
        for key in ("accuracy", "macro_f1", "epsilon", "delta", "n_train", "n_test", "seconds"):
            assert key in out
        assert 0 < out["epsilon"] <= 8.0 and out["delta"] == 1e-5 and out["n_test"] > 0
        assert out["model"] == model_name

        t = np.arange(44100) / 44100
        stereo = np.stack([np.sin(2 * np.pi * 300 * t)] * 2, axis=1) * 0.2
        clip = tmp_path / "clip.wav"
        sf.write(clip, stereo, 44100)
        assert node_main(["predict", str(clip), "--model", str(model), "--json"]) == 0
        pred = json.loads(capsys.readouterr().out)
        assert len(pred["top"]) == 3
        probs = [p["probability"] for p in pred["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
        assert {p["label"] for p in pred["top"]} <= set(out["labels"])

        junk = tmp_path / "notes.txt"
        junk.write_text("not audio")
        assert node_main(["predict", str(junk), "--model", str(model)]) == 1
        assert "notes.txt: not a readable audio file" in capsys.readouterr().err

    def test_predict_missing_model_is_clear(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A missing checkpoint exits 2 with a message, not a traceback."""
        assert node_main(["predict", "x.wav", "--model", str(tmp_path / "none.ckpt")]) == 2
        assert "checkpoint not found" in capsys.readouterr().err
