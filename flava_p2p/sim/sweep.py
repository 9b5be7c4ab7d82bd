"""Sweeps: one base scenario, a grid of overrides, runs spread over worker processes, and the
comparison (table, plots) of their results; ``report`` does the comparison for any run dirs.

A sweep file::

    name: privacy
    base: ../configs/sim_demo.yaml        # relative to this file
    grid:
      privacy.epsilon: [1, 3, 8, null]     # null = no DP (ε = ∞)
      gossip.aggregation: [clipped, mean]
    seeds: [0]

A grid axis whose values are mappings sets several keys at once; ``label`` names the value
(default: the values joined by commas)::

    grid:
      defence:
        - {label: clipped, gossip.aggregation: clipped}
        - {label: plain-mean, gossip.aggregation: mean, gossip.max_one_sided: null}
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from flava_p2p.config import _Strict, load_config, validate_config
from flava_p2p.errors import FlavaError
from flava_p2p.sim.scenario import Scenario


class SweepSpec(_Strict):
    """A grid of dotted-key overrides applied to a base scenario."""

    name: str = "sweep"
    base: str | None = None
    """Base scenario YAML, relative to the sweep file."""
    scenario: dict[str, Any] = Field(default_factory=dict)
    """Inline overrides applied to the base before the grid."""
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0])


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "privacy.epsilon", 3)`` → ``d["privacy"]["epsilon"] = 3``."""
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise FlavaError(f"sweep grid key {key!r}: {p!r} is not a section.")
        d = nxt
    d[parts[-1]] = value


def _label(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("label") or ",".join(_label(v) for v in value.values()))
    return "inf" if value is None else str(value)


def _apply(data: dict[str, Any], key: str, value: Any) -> None:
    """One grid value: a plain value for a dotted key, or a mapping of dotted keys (an axis
    that sets several keys together, e.g. a rule and its screens)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k != "label":
                set_dotted(data, k, v)
    else:
        set_dotted(data, key, value)


def expand(path: str | Path) -> tuple[SweepSpec, list[tuple[str, Scenario, int]]]:
    """The sweep's runs: (run label, scenario, seed), every grid cell × seed, validated."""
    path = Path(path)
    spec = load_config(path, SweepSpec)
    base: dict[str, Any] = {}
    if spec.base is not None:
        base_path = (path.parent / spec.base).resolve()
        base = load_config(base_path, Scenario).model_dump(mode="json")
    for k, v in spec.scenario.items():
        set_dotted(base, k, v)
    keys = list(spec.grid)
    runs = []
    for combo in itertools.product(*(spec.grid[k] for k in keys)):
        data = json.loads(json.dumps(base))
        for k, v in zip(keys, combo, strict=True):
            _apply(data, k, v)
        label = "__".join(
            f"{k.split('.')[-1]}={_label(v)}" for k, v in zip(keys, combo, strict=True)
        )
        data["name"] = label or spec.name
        sc = validate_config(data, Scenario, source=f"{path} [{label}]")
        for seed in spec.seeds:
            runs.append((f"{label or spec.name}__seed={seed}", sc, seed))
    return spec, runs


def _run_one(label: str, sc: Scenario, seed: int, out: str) -> dict[str, Any]:
    from flava_p2p.sim.runner import run_scenario

    summary = run_scenario(sc, out, seed)
    summary["run_dir"] = out
    summary["label"] = label
    return summary


def run_sweep(
    path: str | Path,
    out_dir: str | Path,
    jobs: int | None = None,
    on_done: Callable[[int, int, dict[str, Any]], None] | None = None,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Run every cell of the sweep, ``jobs`` at a time (default: one per core). With
    ``resume``, cells whose run directory already holds a finished run are not run again
    (an interrupted sweep picks up where it stopped)."""
    _, runs = expand(path)
    out = Path(out_dir)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(runs)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    results: list[dict[str, Any]] = []
    if resume:
        for label, _, _ in runs:
            done = out / label / "summary.json"
            if done.is_file():
                summary = json.loads(done.read_text(encoding="utf-8"))
                results.append({**summary, "run_dir": str(out / label), "label": label})
        finished = {r["label"] for r in results}
        runs = [r for r in runs if r[0] not in finished]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = []
        for label, sc, seed in runs:
            learner = sc.learner.model_copy(update={"threads": threads})
            cell = sc.model_copy(update={"learner": learner})
            futures.append(pool.submit(_run_one, label, cell, seed, str(out / label)))
        skipped = len(results)
        for n, fut in enumerate(as_completed(futures), skipped + 1):
            results.append(fut.result())
            if on_done:
                on_done(n, skipped + len(runs), results[-1])
    results.sort(key=lambda r: str(r["label"]))
    write_report([Path(r["run_dir"]) for r in results], out)
    return results


# ----------------------------------------------------------------------------- reports
def load_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(summary, metrics records, resolved scenario) of one run directory."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        records = [
            json.loads(line)
            for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        scenario = yaml.safe_load((run_dir / "scenario.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FlavaError(
            f"{run_dir}: not a complete run directory (summary.json, metrics.jsonl, "
            f"scenario.yaml): {exc}"
        ) from None
    return summary, records, scenario


def _target_epsilon(privacy: dict[str, Any]) -> float | None:
    """The run's target ε from its scenario.yaml (None: no DP); reads older runs' files too."""
    if "epsilon" in privacy:
        eps: float | None = privacy["epsilon"]
        return eps
    return privacy.get("target_epsilon") if privacy.get("enabled", True) else None


def write_report(run_dirs: list[Path], out: Path) -> dict[str, Any]:
    """Compare runs: ``report.json`` plus accuracy, privacy and attack×defence plots as the
    runs' differences allow."""
    from flava_p2p.sim.plots import plot_accuracy, plot_heatmap, plot_nodes, plot_privacy

    out.mkdir(parents=True, exist_ok=True)
    loaded = [load_run(d) for d in run_dirs]
    rows = []
    for d, (s, _, sc) in zip(run_dirs, loaded, strict=True):
        rows.append(
            {
                "run": d.name,
                "epsilon_target": _target_epsilon(sc["privacy"]),
                "epsilon_max": s["privacy"]["epsilon_max"],
                "attack": s["attack"] or "none",
                "aggregation": s["aggregation"],
                "defence": s.get("defence", s["aggregation"]),
                "topology": s["topology"],
                "nodes": s["nodes"],
                "honest_mean_acc": s["final"]["honest_mean_acc"],
                "honest_worst_acc": s["final"]["honest_worst_acc"],
                "consensus_distance": s["final"]["consensus_distance"],
                "bytes_sent": s["final"]["bytes_sent"],
                "wall_seconds": s["wall_seconds"],
            }
        )
    report: dict[str, Any] = {"runs": rows, "plots": []}
    curves = [(d.name, recs) for d, (_, recs, _) in zip(run_dirs, loaded, strict=True) if recs]
    if curves and any(r["honest_mean_acc"] is not None for r in rows):
        report["plots"].append(str(plot_accuracy(curves, out / "accuracy.png")))
    eps = {r["epsilon_target"] for r in rows}
    if len({r["nodes"] for r in rows}) > 1:
        by_n = [
            (r["nodes"], r["epsilon_target"], r["honest_mean_acc"], r["honest_worst_acc"])
            for r in rows
        ]
        report["plots"].append(str(plot_nodes(by_n, out / "nodes.png")))
    elif len(eps) > 1:
        pts = [(r["epsilon_target"], r["honest_mean_acc"], r["honest_worst_acc"]) for r in rows]
        report["plots"].append(str(plot_privacy(pts, out / "privacy.png")))
    attacks = sorted({r["attack"] for r in rows})
    defences = sorted({r["defence"] for r in rows})
    if len(attacks) > 1 or len(defences) > 1:
        cells = {(r["attack"], r["defence"]): r["honest_worst_acc"] for r in rows}
        report["matrix"] = _matrix(attacks, defences, cells)
        report["plots"].append(str(plot_heatmap(attacks, defences, cells, out / "heatmap.png")))
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def _matrix(
    attacks: list[str], defences: list[str], cells: dict[tuple[str, str], float]
) -> dict[str, Any]:
    """Worst honest accuracy per cell, and each attack's damage against the attack-free run
    with the same defence (``attack success`` in points of accuracy)."""
    out: dict[str, Any] = {"worst_honest_acc": {}, "damage_vs_no_attack": {}}
    for a in attacks:
        for d in defences:
            v = cells.get((a, d))
            out["worst_honest_acc"][f"{a}|{d}"] = v
            base = cells.get(("none", d))
            if a != "none" and v is not None and base is not None:
                out["damage_vs_no_attack"][f"{a}|{d}"] = round(base - v, 4)
    return out
