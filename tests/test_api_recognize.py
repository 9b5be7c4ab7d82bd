"""POST /v1/recognize: real HTTP on 127.0.0.1, real audio files, the real front end and head.

The node around the API is a harness holding what the API reads of a running node (its
config, trainer, counters and the core's current model and round); everything the request
goes through — aiohttp, upload validation, decoding, resampling, the encoder and the head — is
the production code.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import soundfile as sf
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient, TestServer

from flava_p2p.config import (
    ApiConfig,
    FeatureConfig,
    ModelConfig,
    NodeConfig,
    PrivacyConfig,
    TrainingConfig,
)
from flava_p2p.learning.trainer import LocalTrainer
from flava_p2p.runtime.api import build_app
from flava_p2p.speech.dataset import load_features, scan_corpus

Client = TestClient[web.Request, web.Application]
Call = Callable[[Client], Awaitable[Any]]


@pytest.fixture(scope="module")
def node(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A trained head on the tiny corpus, as a running node would hold it."""
    fs = load_features(
        scan_corpus(tiny_corpus), FeatureConfig(), cache_dir=tmp_path_factory.mktemp("c")
    )
    trainer = LocalTrainer(
        fs.split("train"),
        model_cfg=ModelConfig(),
        feature_cfg=FeatureConfig(),
        training=TrainingConfig(batch_size=16, lr=0.5),
        privacy=PrivacyConfig(enabled=False),
    )
    trainer.train(60)
    core = SimpleNamespace(model=trainer.get_flat(), round=7)
    home = tmp_path_factory.mktemp("home")
    return SimpleNamespace(cfg=NodeConfig(), trainer=trainer, core=core, counters={}, home=home)


def serve(node: SimpleNamespace, call: Call, **api: Any) -> Any:
    """Run ``call`` against the node's API on a real loopback socket."""
    node.cfg = NodeConfig(api=ApiConfig(**api))

    async def main() -> Any:
        async with TestClient(TestServer(build_app(cast(Any, node)), host="127.0.0.1")) as client:
            return await call(client)

    return asyncio.run(main())


def wav_bytes(wave: np.ndarray, rate: int, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt)
    return buf.getvalue()


def post(body: bytes | FormData) -> Call:
    async def call(client: Client) -> tuple[int, dict[str, Any]]:
        resp = await client.post("/v1/recognize", data=body)
        return resp.status, await resp.json()

    return call


def a_clip(tiny_corpus: Path, word: str = "yes") -> Path:
    return sorted((tiny_corpus / word).glob("*.wav"))[0]


@contextmanager
def running_api(node: SimpleNamespace, status_dir: Path) -> Iterator[str]:
    """The node's API served from a thread on a real loopback port, its URL written to
    ``status_dir/status.json`` as a running node does (so the CLI finds it)."""
    import json
    import threading

    ready = threading.Event()
    stop: dict[str, Any] = {}

    def serve_forever() -> None:
        async def run() -> None:
            runner = web.AppRunner(build_app(cast(Any, node)))
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            stop["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
            (status_dir / "status.json").write_text(json.dumps({"api": stop["url"]}))
            stop["event"], stop["loop"] = asyncio.Event(), asyncio.get_running_loop()
            ready.set()
            await stop["event"].wait()
            await runner.cleanup()

        asyncio.run(run())

    thread = threading.Thread(target=serve_forever, daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield str(stop["url"])
    finally:
        stop["loop"].call_soon_threadsafe(stop["event"].set)
        thread.join(10)


class TestRecognize:
    def test_a_clip_gets_label_probabilities_round_and_latency(
        self, node: SimpleNamespace, tiny_corpus: Path
    ) -> None:
        body = a_clip(tiny_corpus).read_bytes()
        status, out = serve(node, post(body))
        assert status == 200, out
        assert out["label"] in node.trainer.label_names
        assert set(out["probabilities"]) == set(node.trainer.label_names)
        assert sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert out["label"] == max(out["probabilities"], key=out["probabilities"].get)
        assert out["model_round"] == 7 and out["latency_ms"] > 0
        assert out["clip_id"] == hashlib.sha256(body).hexdigest()
        assert out["audio"]["sample_rate"] == 16000
        assert node.counters["api_recognized"] >= 1

    def test_the_trained_model_mostly_recognises_its_words(
        self, node: SimpleNamespace, tiny_corpus: Path
    ) -> None:
        """Over HTTP, the live head gets most held-in clips right (far above chance)."""
        words = ["yes", "no", "stop"]
        clips = [(w, p.read_bytes()) for w in words for p in sorted((tiny_corpus / w).glob("*"))]

        async def call(client: Client) -> int:
            right = 0
            for word, body in clips:
                resp = await client.post("/v1/recognize", data=body)
                right += (await resp.json())["label"] == word
            return right

        right = serve(node, call)
        assert right / len(clips) > 0.6

    def test_multipart_equals_raw_body(self, node: SimpleNamespace, tiny_corpus: Path) -> None:
        body = a_clip(tiny_corpus, "no").read_bytes()
        form = FormData()
        form.add_field("file", body, filename="no.wav", content_type="audio/wav")
        _, raw = serve(node, post(body))
        status, multi = serve(node, post(form))
        assert status == 200
        assert multi["probabilities"] == raw["probabilities"]

    def test_live_weights_are_used(self, node: SimpleNamespace, tiny_corpus: Path) -> None:
        """A new merged model answers the next request (no restart, no stale copy)."""
        body = a_clip(tiny_corpus).read_bytes()
        saved = node.core.model
        try:
            forced = saved.copy()
            target = node.trainer.label_names.index("stop")
            n_labels = len(node.trainer.label_names)
            forced[-n_labels + target] += 1e4  # the head's bias comes last
            node.core.model, node.core.round = forced, 8
            _, out = serve(node, post(body))
            assert out["label"] == "stop" and out["model_round"] == 8
        finally:
            node.core.model, node.core.round = saved, 7

    def test_other_rates_are_resampled_or_refused(
        self, node: SimpleNamespace, tiny_corpus: Path
    ) -> None:
        wave, rate = sf.read(a_clip(tiny_corpus), dtype="float32")
        up = np.interp(np.arange(0, len(wave), rate / 44100), np.arange(len(wave)), wave)
        flac = wav_bytes(up.astype(np.float32), 44100, "FLAC")
        status, out = serve(node, post(flac))
        assert status == 200 and out["audio"] == {
            "format": "FLAC",
            "sample_rate": 44100,
            "seconds": pytest.approx(len(up) / 44100, abs=1e-3),
        }
        status, out = serve(node, post(flac), resample=False)
        assert status == 422 and out["error"] == "sample_rate" and "16 kHz" in out["message"]
        eight = wav_bytes(wave[::2], 8000)
        assert serve(node, post(eight), resample=False)[0] == 200

    @pytest.mark.parametrize(
        ("body", "status", "reason"),
        [
            (b"", 400, "empty"),
            (b"this is not audio at all" * 10, 415, "not_audio"),
            ("stereo", 422, "not_mono"),
            ("long", 413, "too_long"),
            ("big", 413, "too_large"),
            ("ogg", 415, "unsupported_format"),
        ],
    )
    def test_bad_clips_get_clear_4xx(
        self, node: SimpleNamespace, body: bytes | str, status: int, reason: str
    ) -> None:
        rng = np.random.default_rng(0)
        noise = (0.1 * rng.standard_normal(16000)).astype(np.float32)
        made = {
            "stereo": wav_bytes(np.stack([noise, noise], 1), 16000),
            "long": wav_bytes(np.tile(noise, 12), 16000),
            "big": wav_bytes(np.tile(noise, 3), 16000),  # 96 kB over a 64 kB limit
            "ogg": wav_bytes(noise, 16000, "OGG"),
        }
        data = made[body] if isinstance(body, str) else body
        limit = 65536 if body == "big" else 4 << 20
        got, out = serve(node, post(data), max_upload_bytes=limit)
        assert (got, out["error"]) == (status, reason), out
        assert out["message"]
        assert node.counters[f"api_rejected_{reason}"] >= 1

    def test_openapi_describes_recognize(self, node: SimpleNamespace) -> None:
        async def call(client: Client) -> dict[str, Any]:
            resp = await client.get("/v1/openapi.json")
            assert resp.status == 200
            doc: dict[str, Any] = await resp.json()
            return doc

        doc = serve(node, call)
        post_op = doc["paths"]["/v1/recognize"]["post"]
        assert {"200", "400", "413", "415", "422"} <= set(post_op["responses"])
        assert "multipart/form-data" in post_op["requestBody"]["content"]


class TestRecognizeVerb:
    def test_cli_talks_to_the_running_node(
        self,
        node: SimpleNamespace,
        tiny_corpus: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """`flava-node recognize` finds the node's API through status.json, as `status` does,
        and prints the live model's answer; a bad file is reported and fails the command."""
        import json

        from flava_p2p.cli.node import main as node_main

        node.cfg = NodeConfig()
        with running_api(node, tmp_path):
            clip = a_clip(tiny_corpus)
            junk = tmp_path / "junk.wav"
            junk.write_bytes(b"not audio")
            code = node_main(["recognize", str(clip), str(junk), "--home", str(tmp_path), "--json"])
            out = capsys.readouterr()
            lines = [json.loads(x) for x in out.out.splitlines()]
            home = ["--home", str(tmp_path)]
            assert node_main(["feedback", lines[0]["clip_id"], "no", *home]) == 0
            said = capsys.readouterr().out
            assert node_main(["feedback", *home, "--json"]) == 0
            stats = json.loads(capsys.readouterr().out)
            assert node_main(["feedback", lines[0]["clip_id"], "maybe", *home]) != 0
            refusal = capsys.readouterr().err
        assert code == 1, out.err
        assert lines[0]["file"] == str(clip) and lines[0]["model_round"] == 7
        assert lines[0]["label"] in node.trainer.label_names
        assert lines[1]["error"] == "not_audio"
        assert "queued for training" in said and "unknown label 'maybe'" in refusal
        assert stats["per_label"]["no"]["corrected_to"] + stats["per_label"]["no"]["confirmed"] >= 1


class TestFeedback:
    def test_confirm_correct_and_none_of_these(
        self, node: SimpleNamespace, tiny_corpus: Path, tmp_path: Path
    ) -> None:
        """Recognise, then answer: a confirmation and a correction queue the clip in the inbox
        under the true label (where the clip folder picks it up); "none of these" does not;
        the stats count corrections per label and the model's accuracy on the user's clips."""
        node.home = tmp_path  # a fresh home: its own feedback store and inbox
        clips = {w: a_clip(tiny_corpus, w).read_bytes() for w in ("yes", "no", "stop")}

        async def call(client: Client) -> tuple[list[dict[str, Any]], dict[str, Any]]:
            ids = {}
            for word, body in clips.items():
                ids[word] = await (await client.post("/v1/recognize", data=body)).json()
            answers = []
            for word, label in (("yes", "yes"), ("no", "stop"), ("stop", None)):
                resp = await client.post(
                    "/v1/feedback", json={"clip_id": ids[word]["clip_id"], "label": label}
                )
                assert resp.status == 200
                answers.append({"predicted": ids[word]["label"], **(await resp.json())})
            stats = await (await client.get("/v1/feedback/stats")).json()
            return answers, stats

        answers, stats = serve(node, call)
        inbox = node.home / "inbox"
        assert answers[0]["corrected"] == "yes" and answers[0]["queued_for_training"]
        assert answers[1]["corrected"] == "stop" and answers[1]["queued_for_training"]
        assert answers[2]["corrected"] is None and not answers[2]["queued_for_training"]
        queued = sorted(p.relative_to(inbox).parts[0] for p in inbox.rglob("*.wav"))
        assert queued == ["stop", "yes"]
        assert len(list((inbox / "stop").glob("owner_nohash_*.wav"))) == 1
        assert stats["feedback"] == 3 and stats["none_of_these"] == 1
        right = sum(a["model_was_right"] for a in answers[:2])
        assert stats["accuracy_over_time"][-1]["accuracy"] == pytest.approx(right / 2)
        assert (
            stats["per_label"]["stop"]["confirmed"] + stats["per_label"]["stop"]["corrected_to"]
            == 1
        )

    @pytest.mark.parametrize(
        ("doc", "status"),
        [
            ({"clip_id": "0" * 64, "label": "yes"}, 404),
            ({"clip_id": "x"}, 404),
            ({"label": "yes"}, 400),
            ({"clip_id": 5, "label": "yes"}, 400),
            ("not json", 400),
        ],
    )
    def test_bad_feedback_is_refused_clearly(
        self, node: SimpleNamespace, doc: Any, status: int
    ) -> None:
        async def call(client: Client) -> tuple[int, dict[str, Any]]:
            if isinstance(doc, str):
                resp = await client.post("/v1/feedback", data=doc)
            else:
                resp = await client.post("/v1/feedback", json=doc)
            return resp.status, await resp.json()

        got, out = serve(node, call)
        assert got == status and out["message"]

    def test_unknown_label_lists_the_task_labels(
        self, node: SimpleNamespace, tiny_corpus: Path
    ) -> None:
        async def call(client: Client) -> tuple[int, dict[str, Any]]:
            body = a_clip(tiny_corpus).read_bytes()
            rec = await (await client.post("/v1/recognize", data=body)).json()
            answer = {"clip_id": rec["clip_id"], "label": "maybe"}
            resp = await client.post("/v1/feedback", json=answer)
            return resp.status, await resp.json()

        status, out = serve(node, call)
        assert status == 422 and "'yes'" in out["message"]


class TestFeedbackStore:
    def test_retention_and_crash_safety(self, tmp_path: Path) -> None:
        """At most max_clips kept, none older than max_age; the store reopens with its rows
        (WAL, one transaction per write); a newer schema is refused with a clear error."""
        import sqlite3

        from flava_p2p.learning.feedback import FeedbackError, FeedbackStore

        store = FeedbackStore(tmp_path / "fb", tmp_path / "inbox", ["a", "b"], max_clips=3,
                              max_age_s=100)  # fmt: skip
        for k in range(5):
            store.remember(f"{k:064x}", b"RIFF" + bytes(k), ".wav", "a", {"a": 1.0}, 1, now=k)
        assert store.kept() == 3
        assert sorted(p.name[:2] for p in (tmp_path / "fb" / "clips").iterdir()) == ["00"] * 3
        with pytest.raises(FeedbackError) as gone:
            store.record(f"{0:064x}", "a")
        assert gone.value.status == 404
        store.record(f"{4:064x}", "b", now=5)
        store.remember(f"{9:064x}", b"x", ".wav", "a", {}, 1, now=500)  # the rest age out
        assert store.kept() == 1
        store.close()
        again = FeedbackStore(tmp_path / "fb", tmp_path / "inbox", ["a", "b"])
        assert again.stats()["feedback"] == 1
        again.close()
        db = sqlite3.connect(tmp_path / "fb" / "feedback.sqlite")
        db.execute("PRAGMA user_version=99")
        db.close()
        with pytest.raises(sqlite3.DatabaseError, match="move the file away"):
            FeedbackStore(tmp_path / "fb", tmp_path / "inbox", ["a", "b"])
