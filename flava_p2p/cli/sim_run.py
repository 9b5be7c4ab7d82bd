"""``flava-sim run | sweep | report``: simulations from scenario files, and their comparison."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from flava_p2p.cli.common import HelpFormatter, add_logging_args
from flava_p2p.cli.progress import progress_bar


def register(sub: Any) -> None:
    """Add ``run``, ``sweep`` and ``report`` to the ``flava-sim`` subparsers."""
    run = sub.add_parser(
        "run",
        help="run one simulation scenario (YAML) and write metrics, summary and plots",
        formatter_class=HelpFormatter,
        description=(
            "Simulate N real node cores (wire, crypto, peer sampling, robust merging, DP-SGD)\n"
            "on one virtual clock with the scenario's network model, topology, churn and\n"
            "Byzantine peers. Same scenario + seed → byte-identical metrics.jsonl.\n\n"
            "Writes to --out: metrics.jsonl (one record per measurement: per-node held-out\n"
            "accuracy, honest mean/worst, consensus distance, ε, bytes, rejections by reason),\n"
            "summary.json, scenario.yaml (resolved, for reproduction) and accuracy.png.\n\n"
            "--engine processes splits the nodes over processes on this machine (one per\n"
            "core by default, this one included); --engine ray over Ray workers (this\n"
            "machine's cores, or a cluster: `ray start --head` on one machine, `ray start\n"
            "--address HEAD:6379` on the others, then --address HEAD:6379 here).\n"
            "Partitions exchange datagrams in windows of network.min_latency_s, which must\n"
            "be > 0; the metrics are the same, byte for byte, as --engine local's. On one\n"
            "machine prefer processes: a window costs a pipe round trip (~0.1 ms) instead\n"
            "of Ray actor calls (milliseconds). Splitting pays off only when a window holds\n"
            "a lot of work (thousands of nodes per worker, e.g. protocol_10k: 1.5x per round\n"
            "on 2 cores); a 16-node run is fastest with --engine local."
        ),
        epilog=(
            "examples:\n"
            "  flava-sim run configs/sim_demo.yaml\n"
            "  flava-sim run simulations/protocol_10k.yaml --out runs/10k --seed 3\n"
            "  flava-sim run configs/sim_demo.yaml --set nodes=32 --set privacy.epsilon=3\n"
            "  flava-sim run simulations/protocol_10k.yaml --engine processes --workers 2\n"
            "  flava-sim run simulations/scale_1000.yaml --engine ray --workers 2"
        ),
    )
    run.add_argument("scenario", help="scenario YAML (see configs/ and simulations/)")
    run.add_argument("--out", default=None, help="run directory (default runs/<name>-seed<S>)")
    run.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario field (dotted key, YAML value); repeatable",
    )
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    engine = run.add_argument_group("engine")
    engine.add_argument(
        "--engine",
        choices=["local", "processes", "ray"],
        default="local",
        help="local: one process (default); processes: nodes split over processes "
        "on this machine; ray: nodes split over Ray workers",
    )
    engine.add_argument(
        "--workers",
        type=int,
        default=None,
        help="partitions of the nodes (default: this machine's cores for processes, the "
        "cluster's CPUs for ray)",
    )
    engine.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (HEAD:6379, or 'auto'); default: start one on this machine",
    )
    add_logging_args(run, top_level=False)
    run.set_defaults(func=_cmd_run)

    sweep = sub.add_parser(
        "sweep",
        help="run a grid of scenarios over both cores and compare them",
        formatter_class=HelpFormatter,
        description=(
            "Expand a sweep file (base scenario + grid of dotted-key values + seeds), run\n"
            "every cell in worker processes (one per core by default), then write a report:\n"
            "report.json, accuracy.png, privacy.png when ε varies, heatmap.png when attack\n"
            "or aggregation varies."
        ),
        epilog="example:\n  flava-sim sweep simulations/privacy_sweep.yaml --out runs/privacy",
    )
    sweep.add_argument("sweep", help="sweep YAML (see simulations/)")
    sweep.add_argument("--out", default=None, help="output dir (default runs/<sweep name>)")
    sweep.add_argument("--jobs", type=int, default=None, help="parallel runs (default: cores)")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    sweep.add_argument(
        "--resume",
        action="store_true",
        help="skip cells whose run directory already holds a finished run (summary.json)",
    )
    add_logging_args(sweep, top_level=False)
    sweep.set_defaults(func=_cmd_sweep)

    report = sub.add_parser(
        "report",
        help="compare finished runs: table, report.json and plots",
        formatter_class=HelpFormatter,
        description="Compare run directories written by `flava-sim run` or `sweep`.",
        epilog="example:\n  flava-sim report runs/a runs/b --out runs/compare",
    )
    report.add_argument("runs", nargs="+", help="run directories")
    report.add_argument("--out", default="runs/report", help="where plots and report.json go")
    report.add_argument("--json", action="store_true", help="print report.json")
    add_logging_args(report, top_level=False)
    report.set_defaults(func=_cmd_report)


def load_with_overrides(path: str, sets: list[str]) -> Any:
    """The scenario at ``path`` with ``--set KEY=VALUE`` overrides applied and validated."""
    import yaml

    from flava_p2p.config import ConfigError, validate_config
    from flava_p2p.sim.scenario import Scenario, load_scenario
    from flava_p2p.sim.sweep import set_dotted

    sc = load_scenario(path)
    if not sets:
        return sc
    data = sc.model_dump(mode="json")
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set nodes=32.")
        set_dotted(data, key.strip(), yaml.safe_load(value))
    return validate_config(data, Scenario, source=f"{path} with --set")


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def _cmd_run(args: argparse.Namespace) -> int:
    from flava_p2p.sim.runner import Simulation

    sc = load_with_overrides(args.scenario, args.set)
    seed = sc.seed if args.seed is None else args.seed
    out = Path(args.out or f"runs/{sc.name}-seed{seed}")
    runner: Any
    if args.engine == "ray":
        from flava_p2p.sim.partitioned import PartitionedRun, _ray

        ray = _ray()
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
        workers = args.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        building = f"building ({workers} Ray workers)"
    elif args.engine == "processes":
        from flava_p2p.sim.partitioned import PartitionedRun

        workers = args.workers or max(1, os.cpu_count() or 1)
        building = f"building ({workers} worker processes)"
    else:
        building = "building"
    with progress_bar() as bar:
        task = bar.add_task(building, total=None, info="")
        if args.engine in ("ray", "processes"):
            runner = PartitionedRun(sc, seed, workers=workers, backend=args.engine)
        else:
            runner = Simulation(sc, seed)
        bar.update(task, description="simulating", total=runner.horizon, completed=0)

        def on_progress(t: float, horizon: float, rec: dict[str, Any]) -> None:
            bar.update(
                task,
                completed=t,
                info=f"acc {_fmt(rec['honest_mean_acc'])} worst {_fmt(rec['honest_worst_acc'])}"
                f" ε {_fmt(rec['epsilon_max'], '.2f')}",
            )

        summary = runner.run(out, on_progress)
    if args.engine in ("ray", "processes"):
        runner.add_engine(summary, out)
    if args.json:
        print(json.dumps(summary))
        return 0
    _print_summary(summary, out)
    return 0


def _print_summary(s: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    f, p = s["final"], s["privacy"]
    t = Table(title=f"{s['name']} (seed {s['seed']})", show_header=False)
    t.add_row("nodes", f"{s['nodes']} ({s['honest']} honest, byzantine {s['byzantine']})")
    t.add_row("attack / defence", f"{s['attack'] or 'none'} / {s['aggregation']}")
    learner = f"{s['learner']} ({s['model']})" if s.get("model") else s["learner"]
    t.add_row("topology / learner", f"{s['topology']} / {learner}")
    t.add_row(
        "held-out accuracy",
        f"mean {_fmt(f['honest_mean_acc'])}  worst {_fmt(f['honest_worst_acc'])}",
    )
    if p["unit"]:
        t.add_row(
            "privacy",
            f"example-level ε = {p['epsilon_max']:.4f} (max over honest nodes), δ = {p['delta']:g}",
        )
    else:
        t.add_row("privacy", "none (ε = ∞)")
    t.add_row("consensus distance", _fmt(f["consensus_distance"]))
    t.add_row(
        "traffic",
        f"{f['bytes_sent'] / 1e6:.1f} MB, {f['delivered']} delivered, {f['dropped']} dropped",
    )
    t.add_row("rejections", ", ".join(f"{k} {v}" for k, v in f["rejections"].items()) or "none")
    if f.get("penalties"):
        t.add_row("penalties", ", ".join(f"{k} {v}" for k, v in f["penalties"].items()))
    g = f.get("graylist_pairs") or {}
    if g.get("byzantine_ever") or g.get("honest_ever"):
        t.add_row(
            "graylisted",
            f"{g['byzantine_ever']} (honest node, Byzantine peer) pairs, "
            f"{g['honest_ever']} (honest, honest) pairs: false positives",
        )
    t.add_row("time", f"{s['virtual_seconds']:.0f} virtual s in {s['wall_seconds']:.1f} wall s")
    Console().print(t)
    print(f"metrics: {out / 'metrics.jsonl'}\nsummary: {out / 'summary.json'}")
    for plot in s.get("plots", []):
        print(f"plot:    {plot}")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from flava_p2p.sim.sweep import expand, run_sweep

    spec, runs = expand(args.sweep)
    if args.dry_run:
        for label, _, _ in runs:
            print(label)
        return 0
    out = Path(args.out or f"runs/{spec.name}")
    with progress_bar() as bar:
        task = bar.add_task(spec.name, total=len(runs), info="")

        def on_done(n: int, total: int, summary: dict[str, Any]) -> None:
            bar.update(task, completed=n, info=summary["label"])

        results = run_sweep(args.sweep, out, args.jobs, on_done, resume=args.resume)
    _print_report(json.loads((out / "report.json").read_text(encoding="utf-8")))
    print(f"{len(results)} runs in {out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from flava_p2p.sim.sweep import write_report

    report = write_report([Path(r) for r in args.runs], Path(args.out))
    if args.json:
        print(json.dumps(report))
    else:
        _print_report(report)
    return 0


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="runs")
    cols = [
        "run",
        "epsilon_max",
        "attack",
        "aggregation",
        "honest_mean_acc",
        "honest_worst_acc",
        "wall_seconds",
    ]
    for c in cols:
        t.add_column(c.replace("_", " "), overflow="fold")
    for r in report["runs"]:
        t.add_row(*[_fmt(r[c]) if isinstance(r[c], float) else str(r[c]) for c in cols])
    Console().print(t)
    for plot in report["plots"]:
        print(f"plot: {plot}")
