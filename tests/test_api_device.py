"""The device side of the API: speakers, personalization, owner-only training, tokens, and
every malformed request we could think of. Real HTTP on 127.0.0.1, real espeak-ng voices,
the real GE2E speaker encoder, the real front end and head (the node harness of
test_api_recognize holds what the API reads of a running node)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from aiohttp import FormData
from pydantic import ValidationError
from test_api_recognize import Client, node, running_api, serve, wav_bytes

from flava_p2p.config import ApiConfig
from flava_p2p.learning.personal import PersonalFit, fit_personal
from flava_p2p.speech.synth import Speaker, voice

__all__ = ["node"]  # the module-scoped trained head, shared with test_api_recognize

ALICE = Speaker("alice", "en", "f3", 80, 150)
BOB = Speaker("bob", "en-us", "m3", 20, 150)
SENTENCES = [
    "the weather is lovely today",
    "please open the window",
    "seven apples on the table",
    "where did I leave my phone",
]


@pytest.fixture(scope="module")
def voices() -> dict[str, list[bytes]]:
    """Four sentences in each of two clearly different espeak-ng voices, as 16 kHz WAV."""
    with tempfile.TemporaryDirectory() as work:
        return {
            sp.id: [wav_bytes(voice(t, sp, sp.pitch, sp.speed, work), 16000) for t in SENTENCES]
            for sp in (ALICE, BOB)
        }


def form(*clips: bytes, **fields: str) -> FormData:
    data = FormData(default_to_multipart=True)
    for i, clip in enumerate(clips):
        data.add_field("file", clip, filename=f"c{i}.wav", content_type="audio/wav")
    for key, value in fields.items():
        data.add_field(key, value)
    return data


class TestSpeakers:
    def test_enrol_verify_compare_forget(
        self, node: SimpleNamespace, voices: dict[str, list[bytes]], tmp_path: Path
    ) -> None:
        """Enrol Alice with three clips; her fourth clip verifies, Bob's do not; two clips
        compare; the enrolment holds embeddings only and lives in the node's home."""
        node.home = tmp_path
        alice, bob = voices["alice"], voices["bob"]

        async def call(client: Client) -> dict[str, Any]:
            out: dict[str, Any] = {}
            resp = await client.post("/v1/speakers/alice/enroll", data=form(*alice[:3]))
            out["enrol"] = (resp.status, await resp.json())
            out["list"] = await (await client.get("/v1/speakers")).json()
            resp = await client.post("/v1/verify?speaker=alice", data=alice[3])
            out["same"] = await resp.json()
            out["other"] = [
                await (await client.post("/v1/verify", data=form(b, speaker="alice"))).json()
                for b in bob
            ]
            resp = await client.post("/v1/verify", data=form(alice[0], bob[0]))
            out["pair"] = await resp.json()
            out["forget"] = (await client.delete("/v1/speakers/alice")).status
            resp = await client.post("/v1/verify?speaker=alice", data=alice[3])
            out["gone"] = (resp.status, await resp.json())
            return out

        out = serve(node, call)
        assert out["enrol"] == (200, {"speaker": "alice", "clips": 3, "enrolled_clips": 3})
        assert out["list"]["speakers"] == ["alice"]
        same, others = out["same"], out["other"]
        assert same["same_speaker"] == (same["score"] >= same["threshold"])
        assert same["score"] > max(o["score"] for o in others) + 0.15
        assert not any(o["same_speaker"] for o in others)
        assert out["pair"]["score"] < same["score"] and not out["pair"]["same_speaker"]
        assert out["forget"] == 200
        assert out["gone"][0] == 404 and out["gone"][1]["error"] == "unknown_speaker"
        assert not list((tmp_path / "speakers").glob("*.json"))

    def test_owner_only_training(
        self, node: SimpleNamespace, voices: dict[str, list[bytes]], tmp_path: Path
    ) -> None:
        """With api.owner set, the owner's labelled clip is queued for training and a
        stranger's is recorded but not trained on."""
        node.home = tmp_path

        async def call(client: Client) -> list[dict[str, Any]]:
            await client.post("/v1/speakers/alice/enroll", data=form(*voices["alice"][:3]))
            answers = []
            for clip in (voices["alice"][3], voices["bob"][3]):
                rec = await (await client.post("/v1/recognize", data=clip)).json()
                fb = {"clip_id": rec["clip_id"], "label": "yes"}
                answers.append(await (await client.post("/v1/feedback", json=fb)).json())
            return answers

        mine, stranger = serve(node, call, owner="alice", personalize=False)
        assert mine["owner_verified"] is True and mine["queued_for_training"] is True
        assert stranger["owner_verified"] is False and stranger["queued_for_training"] is False
        assert len(list((tmp_path / "inbox" / "yes").glob("*.wav"))) == 1


class TestPersonal:
    def test_fit_helps_a_user_the_shared_head_gets_wrong(self) -> None:
        """A user whose classes sit where the shared head expects other classes: the private
        correction is chosen by cross-validation and fixes their held-out clips; for a user the
        shared head already serves, cross-validation keeps the correction small or off."""
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        dim, k = 8, 3
        centres = rng.normal(size=(k, dim)) * 3
        shared = torch.nn.Linear(dim, k)
        with torch.no_grad():
            shared.weight.copy_(torch.tensor(centres, dtype=torch.float32))
            shared.bias.zero_()
        flat = torch.nn.utils.parameters_to_vector(shared.parameters()).detach().numpy()

        def user(shift: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = rng.integers(0, k, n)
            x = centres[y] + shift[y] + rng.normal(size=(n, dim))
            return torch.tensor(x, dtype=torch.float32), torch.tensor(y)

        def accuracy(weights: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> float:
            torch.nn.utils.vector_to_parameters(torch.tensor(weights), shared.parameters())
            with torch.no_grad():
                return float((shared(x).argmax(1) == y).float().mean())

        odd = np.roll(centres, 1, axis=0) - centres  # this voice's "0" looks like "1", …
        x, y = user(odd, 40)
        xt, yt = user(odd, 400)
        fit = fit_personal(shared, flat, x, y, seed=1)
        assert fit.alpha > 0 and fit.cv_accuracy[str(fit.alpha)] > fit.cv_accuracy["0.0"]
        assert accuracy(fit.weights(flat), xt, yt) > accuracy(flat, xt, yt) + 0.3

        too_few = fit_personal(shared, flat, x[:5], y[:5])
        assert too_few.alpha == 0.0 and np.array_equal(too_few.weights(flat), flat)

    def test_refit_from_feedback_and_persist(
        self, node: SimpleNamespace, tiny_corpus: Path, tmp_path: Path
    ) -> None:
        """Labelled feedback clips drive a fit; /v1/personal reports it, it survives a restart
        of the API (a plain .npz in the home), and ?personal=0 asks the shared model."""
        node.home = tmp_path
        clips = [(w, p.read_bytes()) for w in ("yes", "no", "stop")
                 for p in sorted((tiny_corpus / w).glob("*.wav"))[:5]]  # fmt: skip

        async def call(client: Client) -> tuple[dict[str, Any], dict[str, Any]]:
            for word, body in clips:
                rec = await (await client.post("/v1/recognize", data=body)).json()
                await client.post("/v1/feedback", json={"clip_id": rec["clip_id"], "label": word})
            fit = await (await client.post("/v1/personal/refit")).json()
            shared = await (await client.post("/v1/recognize?personal=0", data=clips[0][1])).json()
            return fit, shared

        fit, shared = serve(node, call)
        assert fit["enabled"] and fit["clips"] == len(clips)
        assert set(fit["cv_accuracy"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
        assert shared["personalized"] is False
        saved = PersonalFit.load(tmp_path / "personal" / "personal.npz")
        assert saved is not None and saved.clips == len(clips) and saved.alpha == fit["alpha"]

        async def again(client: Client) -> dict[str, Any]:
            out: dict[str, Any] = await (await client.get("/v1/personal")).json()
            return out

        assert serve(node, again)["clips"] == len(clips)


def test_openapi_lists_the_device_routes(node: SimpleNamespace) -> None:
    async def call(client: Client) -> dict[str, Any]:
        doc: dict[str, Any] = await (await client.get("/v1/openapi.json")).json()
        return doc

    paths = serve(node, call)["paths"]
    for route in ("/v1/verify", "/v1/speakers/{name}/enroll", "/v1/personal", "/v1/speakers"):
        assert route in paths, route


class TestToken:
    def test_off_loopback_needs_a_token(self) -> None:
        with pytest.raises(ValidationError, match=r"api\.token"):
            ApiConfig(host="0.0.0.0")
        assert ApiConfig(host="0.0.0.0", token="s" * 16).token

    def test_requests_without_the_token_are_refused(self, node: SimpleNamespace) -> None:
        token = "correct horse battery staple"

        async def call(client: Client) -> list[int]:
            codes = [(await client.get("/status")).status]
            codes.append(
                (await client.get("/status", headers={"Authorization": "Bearer x"})).status
            )
            auth = {"Authorization": f"Bearer {token}"}
            codes.append((await client.get("/v1/speakers", headers=auth)).status)
            return codes

        assert serve(node, call, token=token) == [401, 401, 200]


def _truncated_multipart() -> tuple[bytes, dict[str, str]]:
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\nRIFF\x00\x00"
    )
    return body, {"Content-Type": "multipart/form-data; boundary=XyZ"}


#: (name, method, path, body maker, expected status, expected error) — the docs' bad-input table.
BAD_REQUESTS: list[tuple[str, str, str, str, int, str]] = [
    ("truncated multipart", "POST", "/v1/recognize", "truncated", 400, "bad_multipart"),
    ("multipart without a file", "POST", "/v1/recognize", "no_file", 400, "no_file"),
    ("nine clips to enrol", "POST", "/v1/speakers/alice/enroll", "nine", 413, "too_many_files"),
    (
        "path traversal in a name",
        "POST",
        "/v1/speakers/..%2F..%2Fetc/enroll",
        "clip",
        400,
        "bad_speaker_name",
    ),
    ("dot-dot name", "POST", "/v1/speakers/../enroll", "clip", 404, ""),
    (
        "name too long",
        "POST",
        "/v1/speakers/" + "a" * 65 + "/enroll",
        "clip",
        400,
        "bad_speaker_name",
    ),
    ("traversal in verify", "POST", "/v1/verify?speaker=../../x", "clip", 400, "bad_speaker_name"),
    ("verify with no speaker", "POST", "/v1/verify", "clip", 400, "verify_needs_speaker"),
    ("verify unknown speaker", "POST", "/v1/verify?speaker=nobody", "clip", 404, "unknown_speaker"),
    ("non-UTF-8 form field", "POST", "/v1/verify", "latin1_field", 400, "bad_field"),
    ("non-UTF-8 feedback JSON", "POST", "/v1/feedback", "latin1_json", 400, "bad_json"),
    ("label not a string", "POST", "/v1/feedback", "label_number", 400, "bad_feedback"),
    ("text instead of audio", "POST", "/v1/verify?speaker=alice", "text", 415, "not_audio"),
    ("forget a bad name", "DELETE", "/v1/speakers/a.b", "", 400, "bad_speaker_name"),
]


def _body(kind: str, clip: bytes) -> tuple[Any, dict[str, str]]:
    if kind == "truncated":
        return _truncated_multipart()
    made: dict[str, Any] = {
        "": None,
        "clip": clip,
        "text": b"hello, this is not audio" * 8,
        "no_file": form(note="hello"),
        "nine": form(*[clip] * 9),
        "latin1_field": None,
        "latin1_json": '{"clip_id": "x", "label": "caf\xe9"}'.encode("latin-1"),
        "label_number": b'{"clip_id": "x", "label": 3}',
    }
    if kind == "latin1_field":
        boundary = "QqQ"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="speaker"\r\n\r\n'.encode()
            + b"caf\xe9\r\n"
            + f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="a.wav"\r\n\r\n'.encode()
            + clip
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    headers = {"Content-Type": "application/json"} if kind.endswith("json") else {}
    return made[kind], headers


class TestBadInput:
    @pytest.mark.parametrize(("name", "method", "path", "kind", "status", "reason"), BAD_REQUESTS,
                             ids=[r[0] for r in BAD_REQUESTS])  # fmt: skip
    def test_refused_clearly_and_nothing_written_outside_home(
        self,
        node: SimpleNamespace,
        voices: dict[str, list[bytes]],
        tmp_path: Path,
        name: str,
        method: str,
        path: str,
        kind: str,
        status: int,
        reason: str,
    ) -> None:
        home = tmp_path / "home"
        home.mkdir()
        node.home = home
        body, headers = _body(kind, voices["alice"][0])

        async def call(client: Client) -> tuple[int, Any]:
            await client.post("/v1/speakers/alice/enroll", data=voices["alice"][0])
            resp = await client.request(method, path, data=body, headers=headers)
            text = await resp.text()
            return resp.status, text

        got, text = serve(node, call)
        assert got == status, text
        if reason:
            assert f'"error": "{reason}"' in text and '"message"' in text
        outside = sorted(p.name for p in tmp_path.iterdir())
        assert outside == ["home"], f"{name}: wrote {outside}"
        assert sorted(p.name for p in (home / "speakers").iterdir()) == ["alice.json"]


class TestStoreCrash:
    def test_feedback_store_survives_kill_9_during_writes(self, tmp_path: Path) -> None:
        """A writer process records feedback as fast as it can and prints each id after its
        transaction commits; SIGKILL lands mid-write, three times. Every committed id is in
        the database, and SQLite's integrity check passes."""
        writer = (
            "import sys, time\n"
            "from flava_p2p.learning.feedback import FeedbackStore\n"
            "s = FeedbackStore(sys.argv[1] + '/fb', sys.argv[1] + '/inbox', ['a', 'b'])\n"
            "k = int(sys.argv[2])\n"
            "while True:\n"
            "    cid = f'{k:064x}'\n"
            "    s.remember(cid, b'RIFF' + bytes(64), '.wav', 'a', {'a': 1.0}, 1)\n"
            "    s.record(cid, 'b')\n"
            "    print(cid, flush=True)\n"
            "    k += 1\n"
        )
        committed: list[str] = []
        for attempt in range(3):
            with subprocess.Popen(
                [sys.executable, "-c", writer, str(tmp_path), str(attempt * 10**6)],
                stdout=subprocess.PIPE,
                text=True,
            ) as proc:
                assert proc.stdout is not None
                lines = _read_some(proc.stdout, 30 + 20 * attempt)
                os.kill(proc.pid, signal.SIGKILL)
                rest = proc.stdout.read().split()
            committed += lines + rest
        import sqlite3

        db = sqlite3.connect(tmp_path / "fb" / "feedback.sqlite")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {r[0] for r in db.execute("SELECT clip_id FROM feedback")}
        assert len(committed) >= 90 and set(committed) <= stored
        db.close()


def _read_some(stream: Any, n: int) -> list[str]:
    """The first ``n`` lines a child printed (it keeps writing meanwhile)."""
    lines: Iterator[str] = iter(stream.readline, "")
    out = []
    deadline = time.monotonic() + 60
    for line in lines:
        out.append(line.strip())
        if len(out) >= n or time.monotonic() > deadline:
            break
    return out


def test_cli_carries_the_token(
    node: SimpleNamespace, voices: dict[str, list[bytes]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """With api.token in the home's node.yaml, the CLI verbs send it and the node answers;
    the same request without it is refused (401)."""
    import json
    import urllib.error
    import urllib.request

    from flava_p2p.cli.node import main as node_main
    from flava_p2p.config import NodeConfig

    token = "a-long-enough-token-for-tests"
    node.home = tmp_path / "home"
    node.home.mkdir()
    node.cfg = NodeConfig(api=ApiConfig(token=token))
    (node.home / "node.yaml").write_text(f"api: {{token: {token}}}\n")
    with running_api(node, node.home) as url:
        clips = []
        for i, data in enumerate(voices["alice"][:2]):
            clips.append(tmp_path / f"a{i}.wav")
            clips[-1].write_bytes(data)
        home = ["--home", str(node.home)]
        assert node_main(["enroll", "alice", str(clips[0]), *home, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["enrolled_clips"] == 1
        assert (node.home / "speakers" / "alice.json").exists()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "/v1/speakers", timeout=10)
        assert refused.value.code == 401
        refused.value.close()
