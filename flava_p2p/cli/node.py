"""``flava-node``: run and manage one FLAVA-P2P node on this device."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from flava_p2p.cli.common import HelpFormatter, add_logging_args, run_cli
from flava_p2p.cli.device import add_device_commands
from flava_p2p.config import NodeConfig, load_config

DEFAULT_HOME = Path.home() / ".flava"

DESCRIPTION = """\
Run one FLAVA-P2P node: it learns a keyword-spotting model from this device's own audio with
example-level differential privacy (DP-SGD) and gossips noised model deltas with peers.
Raw audio, features and labels never leave the device.
"""

EPILOG = """\
examples:
  flava-node init --home ~/.flava                 create this device's identity and config
  flava-node run --data ~/speech                  join the network and start learning
  flava-node status                               peers, round, ε, accuracy, rejections
  flava-node config check configs/node.yaml      validate a config file
  flava-node config show                         print every setting with its default
  flava-node predict clip.wav --model model.ckpt  top-3 keywords for an audio file
"""


def build_parser() -> argparse.ArgumentParser:
    """The full ``flava-node`` argument parser (also used to render --help)."""
    parser = argparse.ArgumentParser(
        prog="flava-node", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    add_logging_args(parser, top_level=True)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    init = sub.add_parser(
        "init",
        help="create this node's identity (keys, PeerID) and a default node.yaml",
        formatter_class=HelpFormatter,
        description=(
            "Create the node home: an Ed25519 identity with a signed X25519 encryption key\n"
            "(keystore written with mode 0600) and a node.yaml with every default. Prints the\n"
            "PeerID and the multiaddr other nodes use to bootstrap from this one."
        ),
        epilog=(
            "examples:\n"
            "  flava-node init\n"
            "  flava-node init --task configs/tasks/fsdd_digits.yaml   # join a network's task\n"
            "  FLAVA_PASS=... flava-node init --home /srv/flava --passphrase-env FLAVA_PASS \\\n"
            "      --listen /ip4/0.0.0.0/udp/7946"
        ),
    )
    init.add_argument("--home", default=str(DEFAULT_HOME), help="node home (default ~/.flava)")
    init.add_argument(
        "--listen",
        default="/ip4/127.0.0.1/udp/7946",
        help="multiaddr to listen on, written to node.yaml (default /ip4/127.0.0.1/udp/7946)",
    )
    init.add_argument(
        "--passphrase-env",
        default=None,
        metavar="VAR",
        help="encrypt the keystore with the passphrase in environment variable VAR",
    )
    init.add_argument(
        "--task",
        default=None,
        metavar="FILE",
        help="task card (YAML) the network learns: labels, encoder, head, DP bound; copied "
        "into the home as task.yaml (see configs/tasks/). Without it, labels come from the "
        "data folders",
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing identity")
    init.add_argument("--json", action="store_true", help="print PeerID and multiaddr as JSON")
    add_logging_args(init, top_level=False)
    init.set_defaults(func=_cmd_init)

    config = sub.add_parser(
        "config", help="validate or print node configuration", formatter_class=HelpFormatter
    )
    add_logging_args(config, top_level=False)
    config_sub = config.add_subparsers(title="config commands", metavar="ACTION")
    check = config_sub.add_parser(
        "check",
        help="validate a node.yaml and report every problem with its field path",
        formatter_class=HelpFormatter,
    )
    check.add_argument("file", help="path to a node YAML config")
    check.add_argument("--json", action="store_true", help="print the resolved config as JSON")
    add_logging_args(check, top_level=False)
    check.set_defaults(func=_cmd_config_check)
    show = config_sub.add_parser(
        "show", help="print the default configuration as YAML", formatter_class=HelpFormatter
    )
    add_logging_args(show, top_level=False)
    show.set_defaults(func=_cmd_config_show)

    run = sub.add_parser(
        "run",
        help="run the node: discover peers, train with DP-SGD, gossip deltas",
        formatter_class=HelpFormatter,
        description=(
            "Run this node until SIGINT/SIGTERM. It trains on its own audio (never sent\n"
            "anywhere) with example-level DP-SGD, gossips encrypted deltas to random peers and\n"
            "merges theirs with a Byzantine-robust rule. State (model, privacy ledger, view,\n"
            "seqno reservation) survives crashes; a restart resumes with the same PeerID and no\n"
            "clip's ε ever goes backwards. The status API listens on loopback only.\n\n"
            "Continuous learning: --data and HOME/inbox are rescanned every data.watch_period_s;\n"
            "new clips are validated, encoded and trained on without a restart, removed clips\n"
            "leave training, unusable files are counted with their reason. Privacy is accounted\n"
            "per clip: a clip retires (is never sampled again) when its budget is spent, while\n"
            "newer clips keep the node learning. With a task card (node.yaml `task:`, see\n"
            "`flava-node init --task`) the labels are the card's: folders that are not labels\n"
            "of the card are counted, and peers with another card are refused."
        ),
        epilog=(
            "examples:\n"
            "  flava-node run --data ~/speech --bootstrap /ip4/192.0.2.7/udp/7946/p2p/12D3KooW...\n"
            "  flava-node run --home /tmp/n2 --listen /ip4/127.0.0.1/udp/0 --api-port 0\n"
            "  flava-node run --attack alie:f=4        (testers: one of 4 colluding ALIE peers)\n"
            "attacks: sign_flip[:scale=1] gaussian[:sigma=1] scaling[:factor=10]\n"
            "  alie[:f=colluders|:z=...] (z from the network size and f, Baruch et al.)\n"
            "  ipm[:epsilon=0.5] free_rider dissensus[:epsilon=1] equivocation label_flip\n"
            "  replay[:rate=20] garbage[:rate=20] flood[:rate=0 (max)]"
        ),
    )
    run.add_argument("--home", default=str(DEFAULT_HOME), help="node home (default ~/.flava)")
    run.add_argument("--config", default=None, help="config file (default HOME/node.yaml)")
    run.add_argument("--data", default=None, help="override data.root (Speech Commands layout)")
    run.add_argument("--eval-data", default=None, help="override data.eval_root (held-out clips)")
    run.add_argument("--listen", default=None, help="override network.listen multiaddr")
    run.add_argument(
        "--bootstrap",
        nargs="*",
        default=None,
        metavar="MULTIADDR",
        help="override network.bootstrap",
    )
    run.add_argument("--api-port", type=int, default=None, help="override api.port (0 = any)")
    run.add_argument(
        "--attack",
        default=None,
        metavar="NAME[:k=v,...]",
        help="testers only: turn this node into a Byzantine peer (see below)",
    )
    add_logging_args(run, top_level=False)
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser(
        "status",
        help="show a running node's peers, round, ε, accuracy and rejections",
        formatter_class=HelpFormatter,
    )
    status.add_argument("--home", default=str(DEFAULT_HOME), help="node home (default ~/.flava)")
    status.add_argument("--json", action="store_true", help="print the raw /status JSON")
    add_logging_args(status, top_level=False)
    status.set_defaults(func=_cmd_status)

    predict = sub.add_parser(
        "predict",
        help="recognise keywords in audio files with a trained model (on-device)",
        formatter_class=HelpFormatter,
        description=(
            "Print the top-3 labels with probabilities for each file. Files may be WAV or\n"
            "FLAC at any common sample rate, mono or stereo; they are resampled and padded or\n"
            "trimmed to the model's clip length. Nothing is sent anywhere."
        ),
        epilog="example:\n  flava-node predict yes.wav no.flac --model ~/.flava/model.ckpt --json",
    )
    predict.add_argument("files", nargs="+", metavar="FILE", help="audio files")
    predict.add_argument(
        "--model",
        default=str(DEFAULT_HOME / "model.ckpt"),
        metavar="CKPT",
        help="model checkpoint (default: ~/.flava/model.ckpt)",
    )
    predict.add_argument("--top", type=int, default=3, help="labels per file (default 3)")
    predict.add_argument("--json", action="store_true", help="one JSON object per file")
    add_logging_args(predict, top_level=False)
    predict.set_defaults(func=_cmd_predict)
    _add_recognize(sub)
    add_device_commands(sub)
    return parser


def _add_recognize(sub: Any) -> None:
    recognize = sub.add_parser(
        "recognize",
        help="recognise audio files with the running node's live model (its local API)",
        formatter_class=HelpFormatter,
        description=(
            "Send each file to the running node's POST /v1/recognize on loopback and print\n"
            "the label and probabilities from the model as merged right now. With no node\n"
            "running, falls back to the checkpoint in --home (as `predict` does) and says so."
        ),
        epilog="example:\n  flava-node recognize yes.wav --home ~/.flava --json",
    )
    recognize.add_argument("files", nargs="+", metavar="FILE", help="WAV or FLAC files")
    recognize.add_argument("--home", default=str(DEFAULT_HOME), help="node home (default ~/.flava)")
    recognize.add_argument("--json", action="store_true", help="one JSON object per file")
    add_logging_args(recognize, top_level=False)
    recognize.set_defaults(func=_cmd_recognize)

    feedback = sub.add_parser(
        "feedback",
        help="tell the running node what a recognised clip really was (or show the stats)",
        formatter_class=HelpFormatter,
        description=(
            "Confirm or correct a clip recognised through the API (its clip_id), or say it was\n"
            "none of the labels. Confirmed clips are trained on; everything stays on the\n"
            "device. Without arguments: corrections per label and accuracy over time."
        ),
        epilog=(
            "examples:\n  flava-node feedback 9f2c… no --home ~/.flava\n"
            "  flava-node feedback 9f2c… none\n  flava-node feedback --json"
        ),
    )
    feedback.add_argument("clip_id", nargs="?", help="clip_id from recognize")
    feedback.add_argument("label", nargs="?", help="the true label, or `none`")
    feedback.add_argument("--home", default=str(DEFAULT_HOME), help="node home (default ~/.flava)")
    feedback.add_argument("--json", action="store_true", help="print the API's JSON")
    add_logging_args(feedback, top_level=False)
    feedback.set_defaults(func=_cmd_feedback)


def _cmd_init(args: argparse.Namespace) -> int:
    import os

    from flava_p2p.errors import FlavaError
    from flava_p2p.identity import Identity, make_multiaddr, parse_multiaddr, save_keystore

    home = Path(args.home).expanduser()
    keystore = home / "identity.key"
    if keystore.exists() and not args.force:
        raise FlavaError(
            f"{keystore} already exists; this node already has an identity. Use --force to "
            f"replace it (peers will see a new PeerID)."
        )
    host, port, _ = parse_multiaddr(args.listen)
    passphrase = None
    if args.passphrase_env:
        passphrase = os.environ.get(args.passphrase_env)
        if not passphrase:
            raise FlavaError(f"environment variable {args.passphrase_env} is empty or unset.")
    card = None
    if args.task:
        from flava_p2p.task import load_task

        card = load_task(args.task)  # validated before anything is written
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    identity = Identity.generate()
    save_keystore(keystore, identity, passphrase)
    if card is not None:
        (home / "task.yaml").write_text(Path(args.task).read_text(encoding="utf-8"), "utf-8")
    cfg = NodeConfig.model_validate(
        {
            "identity": {"keystore": "identity.key", "passphrase_env": args.passphrase_env},
            "network": {"listen": args.listen},
            "task": "task.yaml" if card is not None else None,
        }
    )
    config_path = home / "node.yaml"
    with config_path.open("w", encoding="utf-8") as f:
        f.write("# Created by `flava-node init`; every field is documented in configs/node.yaml.\n")
        yaml.safe_dump(cfg.model_dump(mode="json"), f, sort_keys=False)
    addr = make_multiaddr(host, port, identity.peer_id)
    if args.json:
        print(
            json.dumps(
                {
                    "peer_id": identity.peer_id_str,
                    "multiaddr": addr,
                    "home": str(home),
                    "config": str(config_path),
                }
            )
        )
    else:
        print(f"PeerID:    {identity.peer_id_str}")
        print(f"multiaddr: {addr}")
        print(f"keystore:  {keystore} (mode 0600)")
        print(f"config:    {config_path}")
        if card is not None:
            print(f"task:      {card.ident}, {len(card.labels)} labels")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from flava_p2p.attacks import parse_attack
    from flava_p2p.runtime.driver import NodeRunner

    home = Path(args.home).expanduser()
    cfg = load_config(Path(args.config) if args.config else home / "node.yaml", NodeConfig)
    overrides: dict[str, dict[str, object]] = {"network": {}, "data": {}, "api": {}}
    if args.data:
        overrides["data"]["root"] = str(Path(args.data).resolve())
    if args.eval_data:
        overrides["data"]["eval_root"] = str(Path(args.eval_data).resolve())
    if args.listen:
        overrides["network"]["listen"] = args.listen
    if args.bootstrap is not None:
        overrides["network"]["bootstrap"] = args.bootstrap
    if args.api_port is not None:
        overrides["api"]["port"] = args.api_port
    merged = cfg.model_dump(mode="json")
    for section, values in overrides.items():
        merged[section].update(values)
    from flava_p2p.config import validate_config

    cfg = validate_config(merged, NodeConfig, source="command-line overrides")
    attack = parse_attack(args.attack) if args.attack else None
    asyncio.run(NodeRunner(home, cfg, attack).run())
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    from flava_p2p.errors import FlavaError

    info_path = Path(args.home).expanduser() / "status.json"
    try:
        url = json.loads(info_path.read_text())["api"] + "/status"
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (loopback URL we wrote)
            status = json.loads(resp.read())
    except (OSError, KeyError, ValueError, urllib.error.URLError) as exc:
        raise FlavaError(
            f"no running node found at {info_path.parent} ({exc}); start one with "
            f"`flava-node run --home {info_path.parent}`."
        ) from None
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    _print_status(status)
    return 0


def _print_status(s: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    privacy = s["privacy"]
    assert isinstance(privacy, dict)
    ex = privacy.get("example_level")
    eps = (
        f"worst clip ε = {ex['epsilon']:.4f} (δ = {ex['delta']:g}, unit: example, per clip; "
        f"bound {ex['target_epsilon']:g}), {ex['retired_clips']} clips retired, "
        f"{ex['steps']} steps"
        if ex
        else "DP off"
    )
    acc = s.get("accuracy")
    acc_text = f"{acc['accuracy']:.4f} at round {acc['round']}" if isinstance(acc, dict) else "—"
    console.print(f"[bold]{s['peer_id']}[/bold]  round {s['round']}  up {s['uptime_s']} s")
    console.print(f"addresses: {', '.join(s['addresses'])}")  # type: ignore[arg-type]
    console.print(f"task: {s.get('task') or '(none: labels from the data folders)'}")
    console.print(f"privacy: {eps}; training: {privacy['budget']}")
    data = s.get("data")
    if isinstance(data, dict):
        per = ", ".join(f"{k} {v}" for k, v in data["clips_per_label"].items())
        console.print(
            f"clips: {data['clips']} ({per}); {data['new_since_start']} new and "
            f"{data['removed_since_start']} removed since start, "
            f"{data['rejected_files']} unusable files"
        )
        if data["unknown_label_folders"]:
            console.print(f"  not labels of the task (ignored): {data['unknown_label_folders']}")
    if ex:
        console.print(f"  DP protects: {ex['protects']}")
    model = s.get("model")
    if isinstance(model, dict):
        console.print(f"model: {model['head']} over {model['encoder']}; {model['labels']}")
    msg = privacy.get("message_level")
    if isinstance(msg, dict):
        console.print(
            f"message-level: ε = {msg['epsilon']:.4f} (δ = {msg['delta']:g}, unit: node),"
            f" {msg['releases']} releases, z = {msg['noise_multiplier']}, C = {msg['clip']}"
        )
    console.print(f"local accuracy: {acc_text}   bytes in/out: {s['bytes_in']}/{s['bytes_out']}")
    table = Table("peer", "address", "via", "state", "score", "rtt ms")
    for p in s["peers"]:  # type: ignore[attr-defined]
        via = str(p.get("transport")) + (" (relayed)" if p.get("relayed") else "")
        table.add_row(
            p["peer_id"], str(p["address"]), via, p["state"], str(p["score"]), str(p["rtt_ms"])
        )
    console.print(table)
    rej = s["rejections_by_reason"]
    if rej:
        console.print("rejections: " + ", ".join(f"{k}={v}" for k, v in rej.items()))  # type: ignore[attr-defined]


def _cmd_config_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.file, NodeConfig)
    card = None
    if cfg.task is not None:
        from flava_p2p.task import apply_task, load_task

        task_path = cfg.task if cfg.task.is_absolute() else Path(args.file).parent / cfg.task
        card = load_task(task_path)
        cfg = apply_task(cfg, card)
    if args.json:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
    else:
        print(f"{args.file}: OK" + (f" (task {card.ident})" if card else ""))
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    yaml.safe_dump(NodeConfig().model_dump(mode="json"), sys.stdout, sort_keys=False)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from flava_p2p.learning.inference import KeywordSpotter
    from flava_p2p.speech.audio import AudioError

    torch.set_num_threads(1)  # one clip at a time: a single thread has the lowest latency
    spotter = KeywordSpotter(args.model)
    failures = 0
    for file in args.files:
        try:
            pred = spotter.predict_file(file, args.top)
        except AudioError as exc:
            failures += 1
            if args.json:
                print(json.dumps({"file": file, "error": str(exc)}))
            else:
                print(f"error: {exc}", file=sys.stderr)
            continue
        if args.json:
            top = [{"label": label, "probability": p} for label, p in pred.top]
            print(json.dumps({"file": pred.file, "top": top}, ensure_ascii=False))
        else:
            ranked = "  ".join(f"{label} {p:.3f}" for label, p in pred.top)
            print(f"{pred.file}: {ranked}")
    return 1 if failures else 0


def _cmd_recognize(args: argparse.Namespace) -> int:
    from flava_p2p.cli.device import ApiError, NodeApi
    from flava_p2p.errors import FlavaError

    home = Path(args.home).expanduser()
    api = NodeApi.find(home)
    if api is None:
        print(f"no running node at {home}: using its checkpoint", file=sys.stderr)
        args.model, args.top = str(home / "model.ckpt"), 3
        return _cmd_predict(args)
    failures = 0
    for file in args.files:
        try:
            body = Path(file).read_bytes()
        except OSError as exc:
            failures += 1
            print(f"error: {file}: cannot read ({exc.strerror or exc})", file=sys.stderr)
            continue
        try:
            out = api.call("POST", "/v1/recognize", body, "audio/wav")
        except ApiError as exc:
            failures += 1
            if args.json:
                print(json.dumps({"file": file, "error": exc.doc.get("error"), **exc.doc}))
            else:
                print(f"error: {file}: {exc}", file=sys.stderr)
            continue
        except FlavaError as exc:
            failures += 1
            print(f"error: {file}: {exc}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps({"file": file, **out}, ensure_ascii=False))
        else:
            top = sorted(out["probabilities"].items(), key=lambda kv: -kv[1])[:3]
            ranked = "  ".join(f"{label} {p:.3f}" for label, p in top)
            print(f"{file}: {ranked}  (round {out['model_round']}, {out['latency_ms']} ms)")
    return 1 if failures else 0


def _cmd_feedback(args: argparse.Namespace) -> int:
    from flava_p2p.cli.device import NodeApi
    from flava_p2p.errors import FlavaError

    home = Path(args.home).expanduser()
    api = NodeApi.find(home)
    if api is None:
        raise FlavaError(
            f"no running node found at {home}; feedback needs the node that recognised "
            f"the clip: `flava-node run --home {home}`."
        )
    if args.clip_id is None:
        out = api.call("GET", "/v1/feedback/stats")
    else:
        if args.label is None:
            raise FlavaError("give the clip's true label after its clip_id (or `none`).")
        label = None if args.label.lower() == "none" else args.label
        body = json.dumps({"clip_id": args.clip_id, "label": label}).encode()
        out = api.call("POST", "/v1/feedback", body, "application/json")
    if args.json or args.clip_id is None:
        print(json.dumps(out, indent=1, ensure_ascii=False))
    else:
        verdict = "right" if out["model_was_right"] else f"wrong (said {out['predicted']})"
        queued = "queued for training" if out["queued_for_training"] else "not trained on"
        print(f"{out['clip_id'][:12]}…: model was {verdict}; {queued}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flava-node`` console script."""
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
