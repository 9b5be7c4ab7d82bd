"""Subcommands of ``flava-sim``; each imports its heavy dependencies only when it runs."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from flava_p2p.cli.common import HelpFormatter, add_logging_args
from flava_p2p.cli.progress import counting_progress, progress_bar


def register(sub: Any) -> None:
    """Add every ``flava-sim`` subcommand to the subparsers action ``sub``."""
    from flava_p2p.cli import sim_run

    _register_dataset(sub)
    _register_centralized(sub)
    sim_run.register(sub)


def _register_dataset(sub: Any) -> None:
    dataset = sub.add_parser("dataset", help="build speech corpora", formatter_class=HelpFormatter)
    add_logging_args(dataset, top_level=False)
    dsub = dataset.add_subparsers(title="dataset commands", metavar="ACTION")
    synth = dsub.add_parser(
        "synth",
        help="voice keywords with espeak-ng into the Speech Commands layout",
        formatter_class=HelpFormatter,
        description=(
            "Generate a synthetic Speech Commands corpus with espeak-ng.\n\n"
            "A speaker is a distinct (accent, voice variant, base pitch, base speed); each take\n"
            "varies around it and lands at a random offset/level in a 1 s 16 kHz clip with light\n"
            "noise, sometimes mixed with the generated _background_noise_ clips. Labels are the\n"
            "given words plus _unknown_ (other words) and _silence_. validation_list.txt and\n"
            "testing_list.txt hold out whole speakers. Same seed → same corpus."
        ),
        epilog="example:\n  flava-sim dataset synth --out data/synth --speakers 60 --takes 5",
    )
    synth.add_argument("--out", required=True, help="output folder (created if missing)")
    synth.add_argument("--speakers", type=int, default=60, help="number of speakers (default 60)")
    synth.add_argument(
        "--takes", type=int, default=5, help="takes per word per speaker (default 5)"
    )
    synth.add_argument(
        "--words",
        nargs="+",
        default=None,
        metavar="WORD",
        help="keywords (default: yes no up down left right on off stop go)",
    )
    synth.add_argument("--no-unknown", action="store_true", help="omit the _unknown_ class")
    synth.add_argument("--no-silence", action="store_true", help="omit the _silence_ class")
    synth.add_argument(
        "--background",
        type=float,
        default=0.3,
        metavar="P",
        help="probability of mixing background noise into a take (default 0.3)",
    )
    synth.add_argument(
        "--holdout",
        type=float,
        default=0.1,
        metavar="FRAC",
        help="fraction of speakers in each of validation and test (default 0.1)",
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    synth.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_logging_args(synth, top_level=False)
    synth.set_defaults(func=_cmd_synth)
    _register_import(dsub)


def _register_import(dsub: Any) -> None:
    imp = dsub.add_parser(
        "import",
        help="convert a real speech corpus into the project's layout (16 kHz mono WAV)",
        formatter_class=HelpFormatter,
        description=(
            "Convert a speech corpus into <out>/<label>/<speaker>_nohash_<n>.wav, 16 kHz mono\n"
            "16-bit, the layout every flava command reads (centralized, data.corpus of a\n"
            "simulation, a node's --data).\n\n"
            "Sources (--layout auto detects them):\n"
            "  speech_commands  <src>/<label>/*.wav|flac (+ _background_noise_/, list files)\n"
            "  fsdd             Free Spoken Digit Dataset: flat <digit>_<speaker>_<n>.wav\n"
            "  manifest         a CSV file with a path,label,speaker header\n\n"
            "Every file is decoded and checked; files that cannot be used (corrupt, empty, not\n"
            "audio, too long) are listed with the reason and skipped. Any sample rate and\n"
            "channel count is accepted (resampled, downmixed). --test-speakers writes\n"
            "testing_list.txt so every tool holds the same speakers out."
        ),
        epilog=(
            "examples:\n"
            "  flava-sim dataset import ~/free-spoken-digit-dataset/recordings --out data/fsdd\n"
            "  flava-sim dataset import ~/speech_commands_v0.02 --out data/sc\n"
            "  flava-sim dataset import clips.csv --out data/mine --test-speakers alice"
        ),
    )
    imp.add_argument("src", help="source folder, or a CSV manifest")
    imp.add_argument("--out", required=True, help="output folder (created if missing)")
    imp.add_argument(
        "--layout",
        choices=["auto", "speech_commands", "fsdd", "manifest"],
        default="auto",
        help="source layout (default: detect)",
    )
    imp.add_argument(
        "--test-speakers", default=None, metavar="A,B", help="write testing_list.txt for them"
    )
    imp.add_argument(
        "--validation-speakers",
        default=None,
        metavar="A,B",
        help="write validation_list.txt for them",
    )
    imp.add_argument("--json", action="store_true", help="print the report as JSON")
    add_logging_args(imp, top_level=False)
    imp.set_defaults(func=_cmd_import)


def _cmd_import(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from flava_p2p.speech.corpus_import import import_corpus

    with counting_progress("importing clips") as on_progress:
        report = import_corpus(
            args.src,
            args.out,
            layout=args.layout,
            test_speakers=args.test_speakers.split(",") if args.test_speakers else None,
            validation_speakers=(
                args.validation_speakers.split(",") if args.validation_speakers else None
            ),
            progress=on_progress,
        )
    if args.json:
        print(json.dumps(asdict(report), ensure_ascii=False))
        return 0
    print(
        f"imported {report.clips} clips ({report.layout} layout) into {report.out} in "
        f"{report.seconds:.1f} s: {report.resampled} resampled to 16 kHz, {report.downmixed} "
        f"downmixed to mono"
        + (f", {report.background} background files" if report.background else "")
    )
    print("per label:   " + ", ".join(f"{k} {v}" for k, v in report.per_label.items()))
    print("per speaker: " + ", ".join(f"{k} {v}" for k, v in report.per_speaker.items()))
    if report.skipped:
        print(f"skipped {len(report.skipped)} file(s):")
        for path, reason in list(report.skipped.items())[:20]:
            print(f"  {reason}" if reason.startswith(path) else f"  {path}: {reason}")
        if len(report.skipped) > 20:
            print(f"  … and {len(report.skipped) - 20} more (all in import_report.json)")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from flava_p2p.speech.synth import KEYWORDS, synthesize_corpus

    with counting_progress("voicing clips") as on_progress:
        summary = synthesize_corpus(
            args.out,
            n_speakers=args.speakers,
            takes=args.takes,
            words=args.words or KEYWORDS,
            unknown=not args.no_unknown,
            silence=not args.no_silence,
            seed=args.seed,
            background_prob=args.background,
            holdout_fraction=args.holdout,
            workers=args.workers,
            progress=on_progress,
        )
    if args.json:
        print(json.dumps(summary.__dict__))
    else:
        print(
            f"wrote {summary.clips} clips from {summary.speakers} speakers "
            f"({summary.validation_speakers} validation, {summary.testing_speakers} test) "
            f"to {summary.out} in {summary.seconds:.1f} s; labels: {', '.join(summary.labels)}"
        )
    return 0


def _register_centralized(sub: Any) -> None:
    cen = sub.add_parser(
        "centralized",
        help="train a centralized keyword-spotting baseline (optionally with DP-SGD)",
        formatter_class=HelpFormatter,
        description=(
            "Train one model on all training speakers and evaluate on held-out speakers.\n\n"
            "Held-out speakers come from validation_list.txt/testing_list.txt (test list\n"
            "preferred), or, when there are none, a seeded --holdout-speakers fraction.\n"
            "With --dp-epsilon the run is DP-SGD with example-level (ε, δ) over the whole run;\n"
            "ε reported is the accountant's, never rounded down.\n\n"
            "The default model, embed_linear, is a linear head over a frozen pretrained speech\n"
            "encoder (Google's speech_embedding, shipped in the package): only the head is\n"
            "learned, so DP noise has ~2k coordinates to cover and the encoder, which never\n"
            "sees private data, costs no privacy. dscnn and aligned_linear learn from log-mel.\n"
            "Every default below comes from the sweeps in docs/benchmarks.md and depends on\n"
            "the model and on DP."
        ),
        epilog=(
            "examples:\n"
            "  flava-sim centralized --data data/synth --json\n"
            "  flava-sim centralized --data data/synth --dp-epsilon 8\n"
            "  flava-sim centralized --data data/synth --dp-epsilon 8 --model aligned_linear\n"
            "  flava-sim centralized --data data/fsdd --test-speakers theo --dp-epsilon 1\n"
            "  flava-sim centralized --data data/synth_digits --eval-data data/fsdd"
        ),
    )
    cen.add_argument("--data", required=True, help="corpus root (Speech Commands layout)")
    cen.add_argument(
        "--dp-epsilon",
        type=float,
        default=None,
        metavar="E",
        help="example-level ε target; omit for non-private training",
    )
    cen.add_argument("--delta", type=float, default=1e-5, help="DP δ (default 1e-5)")
    cen.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="registered model: embed_linear (default), embed_mlp, aligned_linear, dscnn",
    )
    cen.add_argument(
        "--pooling",
        choices=["meanmax", "mean", "attention"],
        default="meanmax",
        help="how embed_* heads pool window embeddings (default meanmax)",
    )
    cen.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs (default 30; 100 for the log-mel models under DP)",
    )
    cen.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="(expected) batch size (default 64 non-private; with DP 256 for embed_*, 512 "
        "for the log-mel models)",
    )
    cen.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate, cosine-decayed (embed_*: 0.5, with DP 1.0; log-mel models: "
        "0.1, with DP 0.5 for aligned_linear and 4.0 for dscnn)",
    )
    cen.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    cen.add_argument(
        "--max-grad-norm",
        type=float,
        default=1.0,
        help="DP per-example clipping bound C (default 1.0)",
    )
    cen.add_argument(
        "--width",
        type=int,
        default=None,
        help="DS-CNN channels or embed_mlp hidden units (default 64; DS-CNN 32 with DP)",
    )
    cen.add_argument(
        "--augment-multiplicity",
        type=int,
        default=1,
        metavar="K",
        help="K time-shifted copies per example per step; under DP their gradients are "
        "averaged before clipping, at no privacy cost (default 1 = off)",
    )
    cen.add_argument(
        "--ema-decay",
        type=float,
        default=None,
        metavar="D",
        help="evaluate (and save) the exponential moving average of the weights with this "
        "decay, e.g. 0.99; post-processing, so free under DP (default: off)",
    )
    cen.add_argument(
        "--accountant",
        choices=["rdp", "prv"],
        default="rdp",
        help="privacy accountant (default rdp)",
    )
    cen.add_argument(
        "--holdout-speakers",
        type=float,
        default=0.3,
        metavar="FRAC",
        help="held-out speakers when there are no list files: a fraction, or a count when "
        ">= 1 (default 0.3)",
    )
    cen.add_argument(
        "--test-speakers",
        default=None,
        metavar="A,B",
        help="test on exactly these speakers (comma-separated); everyone else trains",
    )
    cen.add_argument(
        "--loso",
        action="store_true",
        help="leave-one-speaker-out: hold out every speaker in turn (for corpora with few "
        "speakers, e.g. FSDD's 6) and report each and the mean",
    )
    cen.add_argument(
        "--eval-data",
        default=None,
        metavar="DIR",
        help="train on every speaker of --data and test on every clip of this corpus "
        "(same labels), e.g. synthetic speech in, real recordings out",
    )
    cen.add_argument(
        "--task",
        default=None,
        metavar="FILE",
        help="task card: its ordered labels (other folders are ignored) and front end, "
        "e.g. configs/tasks/speech_emotion.yaml",
    )
    cen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    cen.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads (default: all cores)",
    )
    cen.add_argument(
        "--save",
        default=None,
        metavar="CKPT",
        help="write the trained model here (usable by `flava-node predict`)",
    )
    cen.add_argument("--json", action="store_true", help="print the result as one JSON object")
    cen.add_argument("--out", default=None, metavar="FILE", help="also write the JSON result here")
    add_logging_args(cen, top_level=False)
    cen.set_defaults(func=_cmd_centralized)


#: Defaults per model family, non-private / DP, from the sweeps in docs/benchmarks.md.
#: (epochs, batch, lr) — DP wants large expected batches and few learned parameters.
_CENTRAL_DEFAULTS: dict[str, dict[bool, tuple[int, int, float]]] = {
    "embed": {False: (30, 64, 0.5), True: (30, 256, 1.0)},
    "aligned_linear": {False: (30, 64, 0.1), True: (100, 512, 0.5)},
    "dscnn": {False: (30, 64, 0.1), True: (100, 512, 4.0)},
}


def _centralized_loso(
    args: argparse.Namespace, kwargs: dict[str, Any], bar: Any, task: Any, on_progress: Any
) -> int:
    """Every speaker held out in turn; prints per-speaker and mean accuracy."""
    import statistics

    from flava_p2p.learning.centralized import run_centralized
    from flava_p2p.speech.dataset import scan_corpus

    speakers = sorted({u.speaker for u in scan_corpus(args.data).utterances})
    folds: dict[str, dict[str, Any]] = {}
    for k, speaker in enumerate(speakers):
        bar.update(task, description=f"fold {k + 1}/{len(speakers)} ({speaker})")
        folds[speaker] = run_centralized(
            args.data, test_speakers=[speaker], progress=on_progress, **kwargs
        )
    accs = [r["accuracy"] for r in folds.values()]
    first = next(iter(folds.values()))
    result = {
        "protocol": "leave-one-speaker-out",
        "accuracy": statistics.fmean(accs),
        "accuracy_by_speaker": {s: r["accuracy"] for s, r in folds.items()},
        "worst_speaker_accuracy": min(accs),
        "epsilon": max((r["epsilon"] or 0.0) for r in folds.values()) if args.dp_epsilon else None,
        "delta": first["delta"],
        "privacy_unit": first["privacy_unit"],
        "noise_multiplier": first["noise_multiplier"],
        **{k: first[k] for k in ("model", "features", "pooling", "parameters", "epochs", "lr")},
        "batch_size": first["batch_size"],
        "seed": args.seed,
        "seconds": sum(r["seconds"] for r in folds.values()),
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(result))
    else:
        for speaker, acc in result["accuracy_by_speaker"].items():
            print(f"  held out {speaker:<16} accuracy {acc:.4f}")
        eps = f", ε = {result['epsilon']:.4f} (example-level)" if result["epsilon"] else ""
        print(
            f"leave-one-speaker-out over {len(speakers)} speakers: mean accuracy "
            f"{result['accuracy']:.4f}, worst {result['worst_speaker_accuracy']:.4f}{eps}"
        )
    return 0


def _cmd_centralized(args: argparse.Namespace) -> int:
    from flava_p2p.learning.centralized import run_centralized
    from flava_p2p.learning.trainer import set_threads

    set_threads(args.threads)
    dp = args.dp_epsilon is not None
    model = args.model or "embed_linear"
    family = "embed" if model.startswith("embed_") else model
    d_epochs, d_batch, d_lr = _CENTRAL_DEFAULTS.get(family, _CENTRAL_DEFAULTS["embed"])[dp]
    epochs = args.epochs or d_epochs
    test_speakers = args.test_speakers.split(",") if args.test_speakers else None
    with progress_bar() as bar:
        task = bar.add_task("training", total=epochs, info="")

        def on_progress(done: int, total: int, info: dict[str, Any]) -> None:
            eps = f" ε={info['epsilon']:.3f}" if info.get("epsilon") is not None else ""
            bar.update(task, completed=done, info=f"loss={info['loss']:.3f}{eps}")

        kwargs: dict[str, Any] = {
            "dp_epsilon": args.dp_epsilon,
            "delta": args.delta,
            "epochs": epochs,
            "batch_size": args.batch_size or d_batch,
            "lr": args.lr or d_lr,
            "momentum": args.momentum,
            "max_grad_norm": args.max_grad_norm,
            "width": args.width or (32 if dp and model == "dscnn" else 64),
            "model": model,
            "pooling": args.pooling,
            "accountant": args.accountant,
            "augment_multiplicity": args.augment_multiplicity,
            "ema_decay": args.ema_decay,
            "seed": args.seed,
            "threads": args.threads,
        }
        if args.task:
            from flava_p2p.task import load_task

            card = load_task(args.task)
            kwargs["labels"] = card.labels
            kwargs["features"] = card.features
        if args.loso:
            return _centralized_loso(args, kwargs, bar, task, on_progress)
        result = run_centralized(
            args.data,
            holdout_speakers=args.holdout_speakers,
            test_speakers=test_speakers,
            eval_data=args.eval_data,
            checkpoint=args.save,
            progress=on_progress,
            **kwargs,
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(result))
    else:
        privacy = (
            f"example-level (ε={result['epsilon']:.4f}, δ={result['delta']:g}) of the learned "
            f"{'head' if model.startswith('embed_') else 'model'}"
            if result["epsilon"] is not None
            else "none (non-private)"
        )
        print(
            f"accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  "
            f"on {result['n_test']} clips from {result['n_test_speakers']} held-out speakers\n"
            f"trained on {result['n_train']} clips, model {result['model']} "
            f"({result['parameters']} parameters), "
            f"{result['seconds']:.1f} s; privacy: {privacy}"
        )
    return 0
