"""The node's local API (loopback by default; a bearer token when bound elsewhere).

``/status`` (JSON) and ``/metrics`` (Prometheus text); ``POST /v1/recognize`` (a clip → label
and probabilities from the live model, personalised when that helps); ``POST /v1/feedback`` and
``GET /v1/feedback/stats`` (the user's corrections, kept on the device, confirmed clips queued
for training); ``GET /v1/personal`` (the private correction); ``/v1/speakers`` and
``POST /v1/verify`` (speaker enrolment and verification). The OpenAPI description is at
``/v1/openapi.json``. Every model call runs in a worker thread, never on the event loop."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
from aiohttp import BodyPartReader, web

from flava_p2p.config import ApiConfig
from flava_p2p.identity import peer_id_to_str
from flava_p2p.learning.feedback import FeedbackError, FeedbackStore
from flava_p2p.protocol.carriers import libp2p_peer
from flava_p2p.speech.enrolment import EnrolmentError, SpeakerBook, check_name
from flava_p2p.speech.upload import Upload, UploadError, UploadLimits, decode_upload

if TYPE_CHECKING:
    from flava_p2p.learning.personal import Personalizer
    from flava_p2p.runtime.driver import NodeRunner

log = structlog.get_logger("flava.api")


def status_snapshot(node: NodeRunner) -> dict[str, Any]:
    """Everything an operator wants to see about a running node, JSON-ready."""
    core, now = node.core, time.time()
    led = node.trainer.ledger
    peers = []
    for p in core.view.peers():
        addr = core.address_of(p)
        rtt = core.liveness.rtt(p)
        over_libp2p = addr is not None and libp2p_peer(addr) is not None
        peers.append(
            {
                "peer_id": peer_id_to_str(p),
                "address": (addr[0] if over_libp2p else f"{addr[0]}:{addr[1]}") if addr else None,
                "transport": None if addr is None else "libp2p" if over_libp2p else "udp",
                "relayed": node.libp2p_links.get(p) if over_libp2p else False,
                "state": core.liveness.state(p).value,
                "score": round(core.scores.score(p, now), 3),
                "rtt_ms": None if rtt is None else round(rtt * 1000, 2),
            }
        )
    privacy: dict[str, Any] = {"example_level": None, "budget": node.trainer.budget_state}
    card = node.trainer.schema_card
    if led is not None:
        frozen = card["encoder"] if not card["encoder"].startswith("none") else None
        privacy["example_level"] = {
            "unit": "example (one utterance)",
            "protects": (
                f"the learned head ({card['head']}, {card['parameters']} parameters); the "
                f"pretrained encoder {frozen} is public, fixed, and never saw private data"
                if frozen
                else f"the whole model ({card['head']}, {card['parameters']} parameters)"
            ),
            "accounting": "per clip: a clip's loss accrues only in the steps it could be "
            "sampled in; it retires (is never sampled again) when its budget is spent",
            "epsilon": led.epsilon,
            "delta": led.delta,
            "target_epsilon": led.target_epsilon,
            "retired_clips": node.trainer.retired_clips,
            "clips_accounted": len(led.ages),
            "steps": led.steps,
            "planned_steps": led.planned_steps,
            "noise_multiplier": led.noise_multiplier,
            "accountant": led.accountant,
        }
    mn = core.message_noise
    privacy["message_level"] = (
        None
        if mn is None
        else {
            "unit": "node (all of its data)",
            "epsilon": mn.epsilon(),
            "delta": mn.delta,
            "releases": mn.releases,
            "noise_multiplier": mn.noise_multiplier,
            "clip": mn.clip,
        }
    )
    return {
        "peer_id": node.identity.peer_id_str,
        "task": node.task.ident if node.task else None,
        "model": card,
        "data": data_snapshot(node),
        "addresses": node.addresses,
        "uptime_s": round(now - node.started_at, 1),
        "round": core.round,
        "peers": peers,
        "privacy": privacy,
        "accuracy": node.accuracy or None,
        "training": node.last_train or None,
        "bytes_in": core.wire.bytes_in,
        "bytes_out": core.wire.bytes_out,
        "rejections_by_reason": core.wire.rejections.by_reason(),
        "graylisted_peers": [peer_id_to_str(p) for p in core.scores.graylisted(now)],
        "graylisted_addresses": core.scores.graylisted_addrs(now),
        "counters": {
            **core.counters,
            **node.counters,
            **(dict(node.libp2p.counters) if node.libp2p is not None else {}),
        },
        "attack": node.attack.name if node.attack else None,
    }


def data_snapshot(node: NodeRunner) -> dict[str, Any]:
    """The node's clips: per label, changes since start, unusable files, training state."""
    clips = node.clips
    rejected = clips.rejected
    return {
        "training_state": node.trainer.budget_state,
        "clips_per_label": clips.counts(),
        "clips": len(node.train_set),
        "new_since_start": clips.added_since_start,
        "removed_since_start": clips.removed_since_start,
        "rejected_files": len(rejected),
        "rejected_examples": dict(list(rejected.items())[:5]),
        "unknown_label_folders": clips.unknown_labels,
        "roots": [str(r) for r in clips.roots],
    }


def _peers_by_transport(peers: list[dict[str, Any]]) -> list[str]:
    """One gauge line per (carrier, relayed) pair seen among the peers."""
    counts: dict[tuple[str, bool], int] = {}
    for p in peers:
        key = (str(p.get("transport")), bool(p.get("relayed")))
        counts[key] = counts.get(key, 0) + 1
    return [
        f'flava_peers_by_transport{{transport="{t}",relayed="{str(r).lower()}"}} {n}'
        for (t, r), n in sorted(counts.items())
    ]


def prometheus_text(s: dict[str, Any]) -> str:
    """Render a snapshot in the Prometheus text exposition format."""
    lines = [
        "# TYPE flava_round gauge",
        f"flava_round {s['round']}",
        "# TYPE flava_peers gauge",
        f"flava_peers {len(s['peers'])}",
        "# TYPE flava_peers_by_transport gauge",
        *_peers_by_transport(s["peers"]),
        "# TYPE flava_bytes_in_total counter",
        f"flava_bytes_in_total {s['bytes_in']}",
        "# TYPE flava_bytes_out_total counter",
        f"flava_bytes_out_total {s['bytes_out']}",
        "# TYPE flava_rejections_total counter",
    ]
    for reason, n in sorted(s["rejections_by_reason"].items()):
        lines.append(f'flava_rejections_total{{reason="{reason}"}} {n}')
    ex = s["privacy"]["example_level"]
    if ex is not None:
        lines += ["# TYPE flava_epsilon gauge", f'flava_epsilon{{unit="example"}} {ex["epsilon"]}']
        lines += ["# TYPE flava_retired_clips gauge", f"flava_retired_clips {ex['retired_clips']}"]
    lines += ["# TYPE flava_clips gauge", f"flava_clips {s['data']['clips']}"]
    if s["accuracy"]:
        lines += ["# TYPE flava_accuracy gauge", f"flava_accuracy {s['accuracy']['accuracy']}"]
    lines += [
        "# TYPE flava_graylisted gauge",
        f"flava_graylisted {len(s['graylisted_peers']) + len(s['graylisted_addresses'])}",
    ]
    return "\n".join(lines) + "\n"


def build_app(node: NodeRunner) -> web.Application:
    """The API's routes for one node (served by :func:`start_api`)."""
    from flava_p2p.learning.inference import LiveRecognizer
    from flava_p2p.learning.personal import Personalizer

    api = node.cfg.api
    limits = UploadLimits(
        max_bytes=api.max_upload_bytes,
        max_seconds=api.max_clip_seconds,
        resample_other_rates=api.resample,
    )
    tr = node.trainer
    recognizer = LiveRecognizer(tr.model_cfg, tr.feature_cfg, tr.label_names)
    inbox = node.cfg.data.inbox
    store = FeedbackStore(
        node.home / "feedback",
        inbox if inbox.is_absolute() else node.home / inbox,
        tr.label_names,
        max_clips=api.feedback_max_clips,
        max_age_s=api.feedback_max_age_days * 86400,
    )
    personal = Personalizer(recognizer, store, node.home / "personal" / "personal.npz")
    speakers = Speakers(SpeakerBook(node.home / "speakers", api.speaker_threshold))

    def count(key: str) -> None:
        node.counters[key] = node.counters.get(key, 0) + 1

    def rejected(exc: UploadError | EnrolmentError) -> web.Response:
        return _rejected(node.counters, exc)

    async def decode(data: bytes, rate: int) -> Upload:
        return await asyncio.to_thread(decode_upload, data, rate, limits)

    async def status(_: web.Request) -> web.Response:
        return web.json_response(status_snapshot(node))

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=prometheus_text(status_snapshot(node)), content_type="text/plain")

    async def recognize(request: web.Request) -> web.Response:
        try:
            files, _ = await _read_form(request, limits, max_files=1)
            body = files[0]
            clip = await decode(body, recognizer.feature_cfg.sample_rate)
        except UploadError as exc:
            return rejected(exc)
        weights, round_ = node.core.model, node.core.round
        fit = personal.current
        use_personal = (
            api.personalize
            and fit is not None
            and fit.alpha > 0
            and request.query.get("personal", "1") not in ("0", "false", "no")
        )
        if use_personal and fit is not None:
            weights = fit.weights(np.asarray(weights, dtype=np.float32))
        result = await asyncio.to_thread(recognizer.recognize, clip.wave, weights, round_)
        count("api_recognized")
        clip_id = hashlib.sha256(body).hexdigest()
        suffix = ".flac" if clip.format == "FLAC" else ".wav"
        await asyncio.to_thread(
            store.remember,
            clip_id,
            body,
            suffix,
            result.label,
            result.probabilities,
            result.model_round,
        )
        return web.json_response(
            {
                "clip_id": clip_id,
                "label": result.label,
                "probabilities": result.probabilities,
                "model_round": result.model_round,
                "personalized": use_personal,
                "latency_ms": result.latency_ms,
                "audio": {
                    "format": clip.format,
                    "sample_rate": clip.source_rate,
                    "seconds": round(clip.seconds, 3),
                },
            }
        )

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(openapi_document(limits))

    async def close_store(_: web.Application) -> None:
        store.close()

    # Bodies are capped by hand (a JSON 413), so aiohttp's own cap sits just above ours.
    app = web.Application(
        client_max_size=MAX_ENROL_CLIPS * limits.max_bytes + (64 << 10),
        middlewares=[_auth(api.token)] if api.token else [],
    )
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/recognize", recognize)
    _feedback_routes(app, node, store, personal, speakers)
    _speaker_routes(app, speakers, api, limits, node.counters)
    app.router.add_get("/v1/openapi.json", openapi)
    app.on_cleanup.append(close_store)
    return app


def _rejected(counters: dict[str, int], exc: UploadError | EnrolmentError) -> web.Response:
    key = "api_rejected_" + exc.reason
    counters[key] = counters.get(key, 0) + 1
    return _error(exc.status, exc.reason, str(exc))


def _feedback_routes(
    app: web.Application,
    node: NodeRunner,
    store: FeedbackStore,
    personal: Personalizer,
    speakers: Speakers,
) -> None:
    """The feedback loop (``/v1/feedback``) and personalization (``/v1/personal``)."""
    api = node.cfg.api
    refits: set[asyncio.Task[Any]] = set()

    def count(key: str) -> None:
        node.counters[key] = node.counters.get(key, 0) + 1

    def rejected(exc: UploadError | EnrolmentError) -> web.Response:
        return _rejected(node.counters, exc)

    async def refit() -> None:
        try:
            await asyncio.to_thread(
                personal.refit, np.asarray(node.core.model, dtype=np.float32), node.core.round
            )
            count("api_personal_refits")
        except Exception as exc:  # a failed fit must not take the API down: counted, logged
            count("api_personal_refit_errors")
            log.warning("personal_refit_failed", error=repr(exc))

    async def feedback(request: web.Request) -> web.Response:
        try:
            doc = await request.json()
        except ValueError:  # includes bodies that are not UTF-8
            return _error(400, "bad_json", 'send UTF-8 JSON: {"clip_id": "…", "label": "yes"}.')
        clip_id, label = (doc.get("clip_id"), doc.get("label")) if isinstance(doc, dict) else (0, 0)
        if not isinstance(clip_id, str) or not (label is None or isinstance(label, str)):
            return _error(
                400,
                "bad_feedback",
                'expected {"clip_id": "<from /v1/recognize>", "label": "<a label>" or null for '
                '"none of these"}.',
            )
        owner_ok: bool | None = None
        if api.owner is not None and label is not None:
            try:
                owner_ok = await _owner_says(store, speakers, api.owner, clip_id)
            except (EnrolmentError, UploadError) as exc:
                return rejected(exc)
        try:
            fb = await asyncio.to_thread(store.record, clip_id, label, train=owner_ok is not False)
        except FeedbackError as exc:
            return _error(exc.status, "feedback_refused", str(exc))
        count("api_feedback")
        if api.personalize and fb.inbox_path is not None:
            task = asyncio.get_running_loop().create_task(refit())
            refits.add(task)
            task.add_done_callback(refits.discard)
        return web.json_response(
            {
                "clip_id": fb.clip_id,
                "predicted": fb.predicted,
                "corrected": fb.corrected,
                "model_was_right": fb.corrected == fb.predicted,
                "model_round": fb.model_round,
                "queued_for_training": fb.inbox_path is not None,
                "owner_verified": owner_ok,
            }
        )

    async def feedback_stats(_: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(store.stats))

    async def personal_status(_: web.Request) -> web.Response:
        return web.json_response({"enabled": api.personalize, **personal.describe()})

    async def personal_refit(_: web.Request) -> web.Response:
        if refits:
            await asyncio.gather(*refits, return_exceptions=True)
        await refit()
        return web.json_response({"enabled": api.personalize, **personal.describe()})

    async def stop_refits(_: web.Application) -> None:
        for task in list(refits):
            task.cancel()

    app.router.add_post("/v1/feedback", feedback)
    app.router.add_get("/v1/feedback/stats", feedback_stats)
    app.router.add_get("/v1/personal", personal_status)
    app.router.add_post("/v1/personal/refit", personal_refit)
    app.on_cleanup.insert(0, stop_refits)


def _speaker_routes(
    app: web.Application,
    speakers: Speakers,
    api: ApiConfig,
    limits: UploadLimits,
    counters: dict[str, int],
) -> None:
    """Enrolment (``/v1/speakers``) and verification (``POST /v1/verify``)."""

    def count(key: str) -> None:
        counters[key] = counters.get(key, 0) + 1

    def rejected(exc: UploadError | EnrolmentError) -> web.Response:
        return _rejected(counters, exc)

    async def decode(data: bytes, rate: int) -> Upload:
        return await asyncio.to_thread(decode_upload, data, rate, limits)

    async def enroll(request: web.Request) -> web.Response:
        try:
            name = check_name(request.match_info["name"])
            files, _ = await _read_form(request, limits, max_files=MAX_ENROL_CLIPS)
            clips = [await decode(b, SPEAKER_RATE) for b in files]
            replace = request.query.get("replace", "0") in ("1", "true", "yes")
            out = await asyncio.to_thread(speakers.enrol, name, clips, replace)
        except (UploadError, EnrolmentError) as exc:
            return rejected(exc)
        count("api_enrolled")
        return web.json_response(out)

    async def list_speakers(_: web.Request) -> web.Response:
        names = await asyncio.to_thread(speakers.book.names)
        return web.json_response(
            {"speakers": names, "threshold": api.speaker_threshold, "owner": api.owner}
        )

    async def forget_speaker(request: web.Request) -> web.Response:
        try:
            name = check_name(request.match_info["name"])
        except EnrolmentError as exc:
            return rejected(exc)
        if not await asyncio.to_thread(speakers.book.forget, name):
            return _error(404, "unknown_speaker", f"no speaker {name!r} is enrolled.")
        return web.json_response({"speaker": name, "forgotten": True})

    async def verify(request: web.Request) -> web.Response:
        try:
            files, fields = await _read_form(request, limits, max_files=2)
            name = request.query.get("speaker") or fields.get("speaker")
            clips = [await decode(b, SPEAKER_RATE) for b in files]
            if name is not None:
                check_name(name)
                if len(clips) != 1:
                    raise EnrolmentError(
                        400,
                        "verify_needs_one_clip",
                        f"send one clip to verify against {name!r} (got {len(clips)}).",
                    )
                out = await asyncio.to_thread(speakers.verify, clips[0], name)
            elif len(clips) == 2:
                out = await asyncio.to_thread(speakers.compare, clips[0], clips[1])
            else:
                raise EnrolmentError(
                    400,
                    "verify_needs_speaker",
                    "send one clip with ?speaker=<enrolled name> (or a 'speaker' form field), "
                    f"or two clips as multipart files to compare them (got {len(clips)}).",
                )
        except (UploadError, EnrolmentError) as exc:
            return rejected(exc)
        count("api_verified")
        return web.json_response(out)

    app.router.add_get("/v1/speakers", list_speakers)
    app.router.add_post("/v1/speakers/{name}/enroll", enroll)
    app.router.add_delete("/v1/speakers/{name}", forget_speaker)
    app.router.add_post("/v1/verify", verify)


#: Clips one enrolment request may carry.
MAX_ENROL_CLIPS = 8
SPEAKER_RATE = 16000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _auth(token: str) -> Any:
    """Middleware: every request carries ``Authorization: Bearer <token>`` (constant-time check)."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        got = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(got, expected):
            return _error(
                401, "unauthorized", "send the node's api.token as 'Authorization: Bearer <token>'."
            )
        return await handler(request)

    return check


class Speakers:
    """Speaker embeddings for the API: the encoder is loaded on first use (5.7 MB)."""

    def __init__(self, book: SpeakerBook) -> None:
        self.book = book
        self._encoder: Any = None
        self._lock = threading.Lock()

    def embed(self, clip: Upload) -> np.ndarray:
        """One clip's voice embedding (clips arrive decoded at 16 kHz)."""
        with self._lock:
            if self._encoder is None:
                from flava_p2p.speech.speaker import SpeakerEncoder

                self._encoder = SpeakerEncoder()
        out: np.ndarray = self._encoder.embed(clip.wave, SPEAKER_RATE)
        return out

    def enrol(self, name: str, clips: list[Upload], replace: bool) -> dict[str, Any]:
        """Add clips to ``name``'s enrolment."""
        return self.book.enrol(name, np.stack([self.embed(c) for c in clips]), replace=replace)

    def verify(self, clip: Upload, name: str) -> dict[str, Any]:
        """One clip against an enrolled speaker."""
        v = self.book.verify(self.embed(clip), name)
        return {
            "speaker": name,
            "score": round(v.score, 4),
            "threshold": v.threshold,
            "same_speaker": v.same_speaker,
        }

    def compare(self, a: Upload, b: Upload) -> dict[str, Any]:
        """Two clips against each other."""
        v = self.book.compare(self.embed(a), self.embed(b))
        return {
            "score": round(v.score, 4),
            "threshold": v.threshold,
            "same_speaker": v.same_speaker,
        }


async def _owner_says(store: FeedbackStore, speakers: Speakers, owner: str, clip_id: str) -> bool:
    """Whether the kept clip ``clip_id`` verifies as the node's owner."""
    path = await asyncio.to_thread(store.clip_path, clip_id)
    if path is None:
        return False  # an unknown clip: store.record answers with its own 404
    data = await asyncio.to_thread(path.read_bytes)
    limits = UploadLimits(max_bytes=len(data) + 1, max_seconds=3600.0)
    clip = await asyncio.to_thread(decode_upload, data, SPEAKER_RATE, limits)
    return bool((await asyncio.to_thread(speakers.verify, clip, owner))["same_speaker"])


async def _read_form(
    request: web.Request, limits: UploadLimits, max_files: int
) -> tuple[list[bytes], dict[str, str]]:
    """The clips (the raw body, or up to ``max_files`` file parts of a multipart form) and the
    form's text fields. Sizes are checked per clip; a broken form is a 400, never a crash."""
    too_large = UploadError(
        413, "too_large", f"a clip exceeds {limits.max_bytes} bytes (api.max_upload_bytes)."
    )
    if request.content_length is not None and request.content_length > (
        max_files * limits.max_bytes + 65536
    ):
        raise too_large
    try:
        if request.content_type.startswith("multipart/"):
            return await _read_multipart(request, limits, max_files)
        data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    except UnicodeDecodeError:
        raise UploadError(400, "bad_field", "form fields must be UTF-8 text.") from None
    except ValueError as exc:  # malformed multipart framing, truncated bodies
        raise UploadError(400, "bad_multipart", f"malformed multipart body ({exc}).") from None
    if len(data) > limits.max_bytes:
        raise too_large
    return [data], {}


async def _read_multipart(
    request: web.Request, limits: UploadLimits, max_files: int
) -> tuple[list[bytes], dict[str, str]]:
    """File parts (clips) and short text fields of a multipart form."""
    files: list[bytes] = []
    fields: dict[str, str] = {}
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            raise UploadError(400, "bad_multipart", "nested multipart is not accepted.")
        data = bytes(await part.read(decode=False))
        if part.filename is None and part.name not in (None, "file", "clip", "a", "b"):
            if len(data) > 256:
                raise UploadError(400, "bad_field", f"form field {part.name!r} is too long.")
            fields[str(part.name)] = data.decode("utf-8")
            continue
        if len(data) > limits.max_bytes:
            raise UploadError(
                413, "too_large", f"a clip exceeds {limits.max_bytes} bytes (api.max_upload_bytes)."
            )
        files.append(data)
        if len(files) > max_files:
            raise UploadError(413, "too_many_files", f"at most {max_files} clips per request.")
    if not files:
        raise UploadError(400, "no_file", "the multipart form has no file part.")
    return files, fields


def _error(status: int, reason: str, message: str) -> web.Response:
    return web.json_response({"error": reason, "message": message}, status=status)


def openapi_document(limits: UploadLimits) -> dict[str, Any]:
    """OpenAPI 3.1 description of the local API."""
    error = {
        "description": "unusable clip",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                }
            }
        },
    }
    audio = {"schema": {"type": "string", "format": "binary"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "flava-node local API", "version": "1"},
        "paths": {
            "/status": {"get": {"summary": "node status (JSON)", "responses": {"200": {}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {}}}},
            "/v1/recognize": {
                "post": {
                    "summary": "recognise one clip with the live model",
                    "description": (
                        f"WAV or FLAC, mono, at most {limits.max_seconds:g} s and "
                        f"{limits.max_bytes} bytes; 8 or 16 kHz (other rates "
                        f"{'resampled' if limits.resample_other_rates else 'refused'}). Raw "
                        "body (audio/wav, audio/flac) or multipart/form-data with one file."
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {
                            "audio/wav": audio,
                            "audio/flac": audio,
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"file": {"type": "string", "format": "binary"}},
                                }
                            },
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "label, probabilities, model round, latency",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "clip_id": {"type": "string"},
                                            "label": {"type": "string"},
                                            "probabilities": {"type": "object"},
                                            "model_round": {"type": "integer"},
                                            "latency_ms": {"type": "number"},
                                            "audio": {"type": "object"},
                                        },
                                    }
                                }
                            },
                        },
                        **dict.fromkeys(("400", "413", "415", "422"), error),
                    },
                }
            },
            "/v1/feedback": {
                "post": {
                    "summary": "the user's answer for a recognised clip",
                    "description": (
                        'JSON {"clip_id": from /v1/recognize, "label": the true label, or null '
                        'for "none of these"}. A label of the task queues the clip for '
                        "training (the node's inbox); everything is stored on the device only."
                    ),
                    "responses": {"200": {}, "400": error, "404": error, "422": error},
                }
            },
            "/v1/feedback/stats": {
                "get": {
                    "summary": "corrections per label, accuracy on the user's clips over time",
                    "responses": {"200": {}},
                }
            },
            "/v1/personal": {
                "get": {
                    "summary": "the private correction: α, clips, cross-validated accuracy per α",
                    "responses": {"200": {}},
                }
            },
            "/v1/personal/refit": {
                "post": {
                    "summary": "refit the correction on the user's labelled clips now",
                    "responses": {"200": {}},
                }
            },
            "/v1/speakers": {
                "get": {"summary": "enrolled speakers and the threshold", "responses": {"200": {}}}
            },
            "/v1/speakers/{name}/enroll": {
                "post": {
                    "summary": "add clips (raw body, or up to 8 multipart files) to an enrolment",
                    "description": "Stores voice embeddings only; ?replace=1 starts afresh. "
                    "Names: 1-64 of [A-Za-z0-9_-].",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"audio/wav": audio, "multipart/form-data": {}},
                    },
                    "responses": {"200": {}, "400": error, "413": error, "415": error},
                }
            },
            "/v1/speakers/{name}": {
                "delete": {"summary": "forget an enrolment", "responses": {"200": {}, "404": error}}
            },
            "/v1/verify": {
                "post": {
                    "summary": "one clip against an enrolled speaker, or two clips",
                    "description": "One clip with ?speaker=<name> (or a 'speaker' form field), "
                    "or two multipart files. Answers score (cosine), threshold, same_speaker.",
                    "responses": {"200": {}, "400": error, "404": error, "415": error},
                }
            },
            "/v1/openapi.json": {"get": {"summary": "this document", "responses": {"200": {}}}},
        },
    }


async def start_api(node: NodeRunner, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Serve the API; returns the runner (for cleanup) and its base URL."""
    runner = web.AppRunner(build_app(node), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    url_host = f"[{host}]" if ":" in host else host
    return runner, f"http://{url_host}:{bound}"
