"""Local status API on loopback: ``/status`` (JSON) and ``/metrics`` (Prometheus text)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from flava_p2p.identity import peer_id_to_str

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


async def start_api(node: NodeRunner, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Serve the API; returns the runner (for cleanup) and its base URL."""

    async def status(_: web.Request) -> web.Response:
        return web.json_response(status_snapshot(node))

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=prometheus_text(status_snapshot(node)), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    url_host = f"[{host}]" if ":" in host else host
    return runner, f"http://{url_host}:{bound}"
