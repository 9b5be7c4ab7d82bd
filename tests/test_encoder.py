"""The frozen pretrained speech encoder, its pinned file, the embedding heads and the cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from flava_p2p.config import (
    ConfigError,
    FeatureConfig,
    ModelConfig,
    NodeConfig,
    PrivacyConfig,
    TrainingConfig,
    validate_config,
)
from flava_p2p.learning.models import build_model, predict_classes, schema_card, schema_hash
from flava_p2p.learning.trainer import LocalTrainer
from flava_p2p.speech import encoder as enc
from flava_p2p.speech.dataset import load_features, scan_corpus
from flava_p2p.wire.messages import schema_differences

PACKAGED = Path(enc.__file__).resolve().parents[1] / "pretrained" / "speech_embedding.onnx"


def reference_clip() -> np.ndarray:
    """A deterministic voiced-like sound: a harmonic glide under a Gaussian envelope, 1.5 s."""
    t = np.arange(24000) / 16000
    f0 = 140 + 40 * t
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    wave = sum(np.sin(k * phase) / k for k in range(1, 8)) * np.exp(-(((t - 0.75) / 0.2) ** 2))
    out: np.ndarray = (0.3 * wave / np.abs(wave).max()).astype(np.float32)
    return out


class TestEncoder:
    def test_outputs_match_recorded_values(self) -> None:
        """The packaged encoder maps a fixed clip to the values recorded when it was adopted."""
        out = enc.load_encoder("speech_embedding", 1).encode(reference_clip()[None])
        assert out.shape == (1, 10, 96) and out.dtype == np.float32
        recorded = {
            (0, 0, 0): -14.947963,
            (0, 4, 10): -22.612442,
            (0, 5, 47): 4.210256,
            (0, 9, 95): 19.128277,
            (0, 2, 63): -17.465248,
        }
        for index, value in recorded.items():
            assert out[index] == pytest.approx(value, abs=1e-3)
        assert float(np.linalg.norm(out)) == pytest.approx(448.0654, rel=1e-5)

    def test_thread_count_does_not_change_outputs(self) -> None:
        """1 and 2 onnxruntime threads give the same embeddings (runs are reproducible)."""
        x = np.stack([reference_clip(), 0.5 * reference_clip()])
        one = enc.load_encoder("speech_embedding", 1).encode(x)
        two = enc.load_encoder("speech_embedding", 2).encode(x)
        np.testing.assert_allclose(one, two, atol=1e-5)

    @pytest.mark.parametrize("samples", [12_400, 13_679, 13_680, 16_000, 24_000, 31_999])
    def test_window_count_formula_matches_the_model(self, samples: int) -> None:
        """The spec's window arithmetic (used to size features) is what the graph produces."""
        x = np.full((1, samples), 0.01, dtype=np.float32)
        out = enc.load_encoder().encode(x)
        assert out.shape[1] == enc.SPEECH_EMBEDDING.windows(samples)

    def test_too_short_input_is_a_clear_error(self) -> None:
        """Shorter than the receptive field: a ValueError that says so, not an ONNX crash."""
        with pytest.raises(ValueError, match="receptive field"):
            enc.load_encoder().encode(np.zeros((1, 8000), np.float32))

    def test_changed_model_file_is_refused(self, tmp_path: Path) -> None:
        """One flipped byte: the error names the file, both hashes and how to restore it."""
        bad = tmp_path / "speech_embedding.onnx"
        blob = bytearray(PACKAGED.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        bad.write_bytes(bytes(blob))
        with pytest.raises(enc.EncoderError) as err:
            enc.SpeechEncoder(enc.SPEECH_EMBEDDING, path=bad)
        msg = str(err.value)
        assert str(bad) in msg and enc.SPEECH_EMBEDDING.sha256 in msg and "reinstall" in msg

    def test_missing_model_file_is_refused(self, tmp_path: Path) -> None:
        """No file: an EncoderError naming it, not a FileNotFoundError from deep inside."""
        with pytest.raises(enc.EncoderError, match="cannot read the speech_embedding encoder file"):
            enc.SpeechEncoder(enc.SPEECH_EMBEDDING, path=tmp_path / "nope.onnx")

    def test_missing_packaged_file_says_reinstall(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The packaged lookup failing (a broken install) tells the user to reinstall."""
        spec = enc.EncoderSpec(**{**enc.SPEECH_EMBEDDING.__dict__, "filename": "gone.onnx"})
        with pytest.raises(enc.EncoderError, match=r"missing.*reinstall"):
            enc.read_verified(spec)

    def test_packaged_file_matches_pin(self) -> None:
        """The file in the package is the pinned one (size and hash)."""
        blob = enc.read_verified(enc.SPEECH_EMBEDDING)
        assert len(blob) == enc.SPEECH_EMBEDDING.size


class TestHeads:
    @pytest.mark.parametrize("pooling", ["meanmax", "mean", "attention"])
    @pytest.mark.parametrize("name", ["embed_linear", "embed_mlp"])
    def test_heads_accept_embeddings_and_pooled_vectors(self, name: str, pooling: str) -> None:
        """Every head maps (B, 1, 96, W) embeddings to logits; fixed pooling can be hoisted."""
        cfg = ModelConfig.model_validate({"name": name, "pooling": pooling, "width": 16})
        model = build_model(cfg, 5, 96, 10)
        x = torch.randn(4, 1, 96, 10)
        logits = model(x)
        assert logits.shape == (4, 5)
        pooled = model.precompute(x)  # type: ignore[operator]
        if pooling == "attention":
            assert pooled is None
        else:
            torch.testing.assert_close(model(pooled), logits)
            torch.testing.assert_close(pooled.norm(dim=1), torch.ones(4))

    @pytest.mark.parametrize("pooling", ["meanmax", "mean"])
    def test_pooling_once_scores_exactly_as_pooling_per_batch(self, pooling: str) -> None:
        """The simulator scores every node's model on the held-out clips pooled once
        (sim/real_learners.py); predictions must be the very ones of pooling inside each
        64-clip forward, bit for bit, or recorded accuracies would drift."""
        cfg = ModelConfig.model_validate({"name": "embed_linear", "pooling": pooling})
        model = build_model(cfg, 12, 96, 37)
        x = torch.randn(300, 1, 96, 37, generator=torch.Generator().manual_seed(3))
        pooled = model.precompute(x)  # type: ignore[operator]
        batches = torch.cat([model.precompute(x[i : i + 64]) for i in range(0, 300, 64)])  # type: ignore[operator]
        assert torch.equal(pooled, batches)
        assert torch.equal(predict_classes(model, pooled), predict_classes(model, x))

    def test_schema_card_names_what_differs(self) -> None:
        """Two nodes with other heads or encoders differ in the card field that says so."""
        labels = ["a", "b", "c"]
        lin = build_model(ModelConfig(), 3, 96, 10)
        mlp = build_model(ModelConfig(name="embed_mlp"), 3, 96, 10)
        ours = schema_card(ModelConfig(), FeatureConfig(), labels, lin)
        theirs = schema_card(ModelConfig(name="embed_mlp"), FeatureConfig(), labels, mlp)
        diff = schema_differences(ours, theirs)
        assert any(d.startswith("head: ours embed_linear") for d in diff)
        assert not any(d.startswith("encoder") for d in diff)
        assert schema_hash(ModelConfig(), FeatureConfig(), labels, lin) != schema_hash(
            ModelConfig(name="embed_mlp"), FeatureConfig(), labels, mlp
        )
        assert "speech_embedding@" in ours["encoder"]

    def test_model_and_front_end_must_match(self) -> None:
        """A log-mel model on encoder embeddings is a config error naming both settings."""
        with pytest.raises(ConfigError, match=r"model 'dscnn' reads logmel.*features.kind"):
            validate_config({"model": {"name": "dscnn"}}, NodeConfig, "node.yaml")
        cfg = validate_config(
            {"model": {"name": "dscnn"}, "features": {"kind": "logmel"}}, NodeConfig, "x"
        )
        assert cfg.features.clip_seconds == 1.0
        assert NodeConfig().features.clip_seconds == 1.5


class TestFeatureCache:
    def test_cache_hits_do_not_re_encode(self, tiny_corpus: Path, tmp_path: Path) -> None:
        """The second load of the same clips runs the encoder on none of them (counted)."""
        encoder = enc.load_encoder("speech_embedding", 1)
        before = encoder.calls
        first = load_features(scan_corpus(tiny_corpus), FeatureConfig(), cache_dir=tmp_path)
        assert encoder.calls - before == first.encoded == len(first) > 0
        mid = encoder.calls
        second = load_features(scan_corpus(tiny_corpus), FeatureConfig(), cache_dir=tmp_path)
        assert encoder.calls == mid
        assert second.encoded == 0 and second.cache_hits == len(first)
        torch.testing.assert_close(first.features, second.features)

    def test_new_clip_is_the_only_one_encoded(self, tiny_corpus: Path, tmp_path: Path) -> None:
        """Adding one clip to a cached corpus encodes exactly that clip."""
        root = tmp_path / "corpus"
        shutil.copytree(tiny_corpus, root)
        load_features(scan_corpus(root), FeatureConfig(), cache_dir=tmp_path / "c")
        src = next((root / "yes").glob("*.wav"))
        extra = root / "yes" / "newcomer_nohash_0.wav"
        data = bytearray(src.read_bytes())
        data[-2:] = b"\x01\x00"  # other content: a different key
        extra.write_bytes(bytes(data))
        again = load_features(scan_corpus(root), FeatureConfig(), cache_dir=tmp_path / "c")
        assert again.encoded == 1

    def test_unchanged_files_are_not_read_again(
        self, tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The file index skips hashing files whose stat fingerprint is unchanged; a file
        rewritten in place (same name, other bytes) is hashed, and so encoded, again."""
        root = tmp_path / "corpus"
        shutil.copytree(tiny_corpus, root)
        load_features(scan_corpus(root), FeatureConfig(), cache_dir=tmp_path / "c")
        reads: list[Path] = []
        real_read = Path.read_bytes

        def counting(self: Path) -> bytes:
            reads.append(self)
            return real_read(self)

        monkeypatch.setattr(Path, "read_bytes", counting)
        again = load_features(scan_corpus(root), FeatureConfig(), cache_dir=tmp_path / "c")
        assert reads == [] and again.encoded == 0 and again.cache_hits == len(again) > 0
        victim = next((root / "yes").glob("*.wav"))
        data = bytearray(real_read(victim))
        data[-2:] = b"\x02\x00"
        victim.write_bytes(bytes(data))
        third = load_features(scan_corpus(root), FeatureConfig(), cache_dir=tmp_path / "c")
        assert reads == [victim] and third.encoded == 1

    def test_closed_form_dp_matches_opacus(self, tiny_corpus: Path, tmp_path: Path) -> None:
        """The linear head's closed-form DP-SGD step gives Opacus' weights for the same seeds."""
        fs = load_features(scan_corpus(tiny_corpus), FeatureConfig(), cache_dir=tmp_path)
        train = fs.split("train")

        def trainer(closed: bool) -> LocalTrainer:
            return LocalTrainer(
                train,
                model_cfg=ModelConfig(),
                feature_cfg=FeatureConfig(),
                training=TrainingConfig(batch_size=8, lr=0.5),
                privacy=PrivacyConfig(planned_steps=50, target_epsilon=8.0),
                seed=3,
                noise_seed=4,
                closed_form_dp=closed,
            )

        fast, opacus = trainer(True), trainer(False)
        assert fast.closed_form_dp and not opacus.closed_form_dp
        w0 = fast.get_flat().copy()
        rf, ro = fast.train(20), opacus.train(20)
        np.testing.assert_allclose(fast.get_flat(), opacus.get_flat(), atol=1e-5)
        assert not np.allclose(fast.get_flat(), w0)
        assert rf.epsilon == ro.epsilon and rf.examples == ro.examples


class TestParalinguistic:
    """eGeMAPS front ends (speech emotion): shapes, determinism, finite values, schema."""

    def _waves(self) -> torch.Tensor:
        t = np.arange(48000) / 16000
        rng = np.random.default_rng(0)
        voiced = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
        noise = 0.05 * rng.standard_normal(len(t))
        return torch.from_numpy(np.stack([voiced, noise]).astype(np.float32))

    def test_egemaps_functionals(self) -> None:
        from flava_p2p.speech.features import make_frontend

        fe = make_frontend(FeatureConfig(kind="egemaps"))
        a = fe(self._waves())
        assert a.shape == (2, 1, 88, 1) and torch.isfinite(a).all()
        assert torch.equal(a, fe(self._waves()))  # deterministic
        assert not torch.equal(a[0], a[1])  # a voiced tone and noise differ

    def test_embedding_with_egemaps_appends_to_every_window(self) -> None:
        from flava_p2p.speech.features import make_frontend

        both = make_frontend(FeatureConfig(kind="speech_embedding+egemaps"))
        emb = make_frontend(FeatureConfig(kind="speech_embedding", clip_seconds=3.0))
        x = both(self._waves())
        e = emb(self._waves())
        assert x.shape == (2, 1, 96 + 88, e.shape[-1])
        torch.testing.assert_close(x[:, :, :96], e)
        tail = x[:, :, 96:]
        assert torch.equal(tail, tail[..., :1].expand_as(tail))  # same vector in each window
        # scaled to the clip's mean window norm
        torch.testing.assert_close(
            tail[..., 0].norm(dim=2).squeeze(1), e.norm(dim=2).mean(-1).squeeze(1)
        )
        card = schema_card(
            ModelConfig(),
            FeatureConfig(kind="speech_embedding+egemaps"),
            ["a", "b"],
            build_model(ModelConfig(), 2, 184, x.shape[-1]),
        )
        assert "eGeMAPS" in card["encoder"] and "speech_embedding" in card["encoder"]
