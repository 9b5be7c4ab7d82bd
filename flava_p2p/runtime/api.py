"""Local API on loopback: ``/status`` (JSON), ``/metrics`` (Prometheus text),
``POST /v1/recognize`` (a clip → label and probabilities from the live model),
``POST /v1/feedback`` and ``GET /v1/feedback/stats`` (the user's corrections, kept on the
device, confirmed clips queued for training); the OpenAPI description is at
``/v1/openapi.json``."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from flava_p2p.identity import peer_id_to_str
from flava_p2p.learning.feedback import FeedbackError, FeedbackStore
from flava_p2p.speech.upload import UploadError, UploadLimits, decode_upload

if TYPE_CHECKING:
    from flava_p2p.runtime.driver import NodeRunner


def status_snapshot(node: NodeRunner) -> dict[str, Any]:
    """Everything an operator wants to see about a running node, JSON-ready."""
    core, now = node.core, time.time()
    led = node.trainer.ledger
    peers = []
    for p in core.view.peers():
        addr = core.address_of(p)
        rtt = core.liveness.rtt(p)
        peers.append(
            {
                "peer_id": peer_id_to_str(p),
                "address": f"{addr[0]}:{addr[1]}" if addr else None,
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
        "counters": {**core.counters, **node.counters},
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


def prometheus_text(s: dict[str, Any]) -> str:
    """Render a snapshot in the Prometheus text exposition format."""
    lines = [
        "# TYPE flava_round gauge",
        f"flava_round {s['round']}",
        "# TYPE flava_peers gauge",
        f"flava_peers {len(s['peers'])}",
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

    async def status(_: web.Request) -> web.Response:
        return web.json_response(status_snapshot(node))

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=prometheus_text(status_snapshot(node)), content_type="text/plain")

    async def recognize(request: web.Request) -> web.Response:
        try:
            body = await _read_clip(request, limits)
            clip = await asyncio.to_thread(
                decode_upload, body, recognizer.feature_cfg.sample_rate, limits
            )
        except UploadError as exc:
            key = "api_rejected_" + exc.reason
            node.counters[key] = node.counters.get(key, 0) + 1
            return _error(exc.status, exc.reason, str(exc))
        weights, round_ = node.core.model, node.core.round
        result = await asyncio.to_thread(recognizer.recognize, clip.wave, weights, round_)
        node.counters["api_recognized"] = node.counters.get("api_recognized", 0) + 1
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
                "latency_ms": result.latency_ms,
                "audio": {
                    "format": clip.format,
                    "sample_rate": clip.source_rate,
                    "seconds": round(clip.seconds, 3),
                },
            }
        )

    async def feedback(request: web.Request) -> web.Response:
        try:
            doc = await request.json()
        except ValueError:
            return _error(400, "bad_json", 'send JSON: {"clip_id": "…", "label": "yes"}.')
        clip_id, label = (doc.get("clip_id"), doc.get("label")) if isinstance(doc, dict) else (0, 0)
        if not isinstance(clip_id, str) or not (label is None or isinstance(label, str)):
            return _error(
                400,
                "bad_feedback",
                'expected {"clip_id": "<from /v1/recognize>", "label": "<a label>" or null for '
                '"none of these"}.',
            )
        try:
            fb = await asyncio.to_thread(store.record, clip_id, label)
        except FeedbackError as exc:
            return _error(exc.status, "feedback_refused", str(exc))
        node.counters["api_feedback"] = node.counters.get("api_feedback", 0) + 1
        return web.json_response(
            {
                "clip_id": fb.clip_id,
                "predicted": fb.predicted,
                "corrected": fb.corrected,
                "model_was_right": fb.corrected == fb.predicted,
                "model_round": fb.model_round,
                "queued_for_training": fb.inbox_path is not None,
            }
        )

    async def feedback_stats(_: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(store.stats))

    async def close_store(_: web.Application) -> None:
        store.close()

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(openapi_document(limits))

    # Bodies are capped by hand (a JSON 413), so aiohttp's own cap sits just above ours.
    app = web.Application(client_max_size=limits.max_bytes + (64 << 10))
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/recognize", recognize)
    app.router.add_post("/v1/feedback", feedback)
    app.router.add_get("/v1/feedback/stats", feedback_stats)
    app.router.add_get("/v1/openapi.json", openapi)
    app.on_cleanup.append(close_store)
    return app


async def _read_clip(request: web.Request, limits: UploadLimits) -> bytes:
    """The clip's bytes: the raw body, or the first file part of a multipart form."""
    too_large = UploadError(
        413, "too_large", f"the body exceeds {limits.max_bytes} bytes (api.max_upload_bytes)."
    )
    if request.content_length is not None and request.content_length > limits.max_bytes + 65536:
        raise too_large
    try:
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if isinstance(part, BodyPartReader) and (part.filename or part.name):
                    data = await part.read(decode=False)
                    if len(data) > limits.max_bytes:
                        raise too_large
                    return bytes(data)
            raise UploadError(400, "no_file", "the multipart form has no file part.")
        data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    except ValueError as exc:  # malformed multipart framing
        raise UploadError(400, "bad_multipart", f"malformed multipart body ({exc}).") from None
    if len(data) > limits.max_bytes:
        raise too_large
    return data


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
