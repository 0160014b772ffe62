"""Compare evaluated runs: weighted F1 per test condition, one series per run.

    serwild compare runs/clean-only runs/augmented [--out DIR] [--metric weighted_f1] [--unit block]

Reads each run's ``report/metrics.json`` (written by ``serwild evaluate``; a report folder
or a metrics.json path works too) and writes, into ``--out`` (default
``<first run's parent>/compare_<run>_vs_<run>``):

    compare.png   the paper's Figures 4/5: the metric per test condition, one bar per run
    compare.md    the table (one column per run, then each run's difference to the first)
    compare.json  the same numbers

and prints the table. The first run is the baseline the differences are taken against.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from serwild import atomic
from serwild.errors import UsageError
from serwild.evaluate.report import condition_label, order_conditions, plot_series, protocol_line
from serwild.evaluate.report import metric as get

METRICS = {"weighted_f1": "weighted.f1", "wa": "wa", "ua": "ua", "macro_f1": "macro.f1",
           "weighted_precision": "weighted.precision", "weighted_recall": "weighted.recall"}
TITLES = {"weighted_f1": "weighted F1", "wa": "WA (accuracy)", "ua": "UA (macro recall)", "macro_f1": "macro F1",
          "weighted_precision": "weighted precision", "weighted_recall": "weighted recall"}


# ----------------------------------------------------------------------------- library


def find_metrics(run: str | Path) -> Path:
    """``run`` may be a run folder, its report folder, or a metrics.json file."""
    p = Path(run)
    for candidate in (p / "report" / "metrics.json", p / "metrics.json", p):
        if candidate.is_file():
            return candidate
    raise UsageError(f"run {run}: no report/metrics.json; evaluate it first "
                     f"(serwild evaluate --checkpoint {p / 'best.pt'})")


def load_metrics(run: str | Path) -> dict[str, Any]:
    path = find_metrics(run)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"run {run}: {path} is not readable JSON ({e})") from None
    if not isinstance(data, dict) or "conditions" not in data:
        raise UsageError(f"run {run}: {path} is not a serwild evaluate report")
    return data


def run_dir(run: str | Path) -> Path:
    """The run folder, whether ``run`` names it, its report folder or its metrics.json."""
    p = Path(run).resolve()
    if p.is_file():
        p = p.parent
    return p.parent if p.name == "report" else p


def run_names(runs: Sequence[str | Path]) -> list[str]:
    """Series names: each run's folder name, made unique if two runs share one."""
    names: list[str] = []
    for r in runs:
        p = run_dir(r)
        name, k = p.name, 2
        while name in names:
            name, k = f"{p.name} ({k})", k + 1
        names.append(name)
    return names


def comparison(reports: Mapping[str, Mapping[str, Any]], metric: str = "weighted_f1",
               unit: str = "block") -> dict[str, Any]:
    """``{"conditions": [...], "labels": [...], "values": {run: [v or None]}}`` in condition order."""
    snr: dict[str, float | None] = {}
    for rep in reports.values():
        for c, v in rep["conditions"].items():
            snr.setdefault(c, v.get("snr_db"))
    conds = order_conditions(snr)
    values = {name: [get(rep["conditions"][c][unit], METRICS[metric]) if c in rep["conditions"] else None
                     for c in conds] for name, rep in reports.items()}
    return {"metric": metric, "unit": unit, "conditions": conds,
            "labels": [condition_label(c, snr[c]) for c in conds], "values": values}


def markdown_table(comp: Mapping[str, Any]) -> str:
    """Rows = test conditions; one column per run, then each run minus the first (baseline)."""
    names = list(comp["values"])
    base = names[0]
    head = ["Test condition"] + names + [f"Δ {n} − {base}" for n in names[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, label in enumerate(comp["labels"]):
        vals = [comp["values"][n][i] for n in names]
        cells = [label] + ["—" if v is None else f"{v:.3f}" for v in vals]
        cells += ["—" if v is None or vals[0] is None else f"{v - vals[0]:+.3f}" for v in vals[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_runs(runs: Sequence[str | Path], out: str | Path | None = None, metric: str = "weighted_f1",
                 unit: str = "block") -> Path:
    """Write compare.png / compare.md / compare.json for ``runs``; returns the output folder."""
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r} (choose from {', '.join(sorted(METRICS))})")
    names = run_names(runs)
    reports = {n: load_metrics(r) for n, r in zip(names, runs)}
    datasets = {rep.get("dataset") for rep in reports.values()}
    comp = comparison(reports, metric, unit)
    out_dir = Path(out) if out is not None else default_out(runs, names)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = TITLES[metric]
    plot_series(out_dir / "compare.png", comp["labels"], comp["values"], title,
                f"{title} per test condition ({'/'.join(sorted(map(str, datasets))).upper()}, per {unit})")
    lines = [f"# Comparison: {title} per test condition (per {unit})", "", markdown_table(comp), "",
             f"Baseline for the differences: {names[0]}."]
    if len(datasets) > 1:
        lines += ["", "**Warning:** these runs were evaluated on different datasets "
                  f"({', '.join(map(str, datasets))})."]
    lines += ["", "## Runs", ""]
    for name, r in zip(names, runs):
        what = protocol_line(reports[name]).replace("**Protocol:** ", "")
        lines.append(f"- **{name}** (`{find_metrics(r)}`): {what}")
    lines += ["", "![comparison](compare.png)"]
    atomic.write_text(out_dir / "compare.md", "\n".join(lines) + "\n")
    sources = {n: str(find_metrics(r)) for n, r in zip(names, runs)}
    atomic.write_json(out_dir / "compare.json", {**comp, "runs": sources})
    return out_dir


def default_out(runs: Sequence[str | Path], names: Sequence[str]) -> Path:
    stem = "compare_" + "_vs_".join(n.replace(" ", "") for n in names)
    return run_dir(runs[0]).parent / (stem if len(stem) <= 100 else "compare")
