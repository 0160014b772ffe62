"""Compare evaluated runs: a metric per test condition, one series per arm, with the
paired interval of each difference to the first arm (the baseline).

A difference is paired only when every run scored the same test blocks (same build fingerprint,
same blocks in each run's ``logits.npz``): both arms are then scored on the same resampled test
utterances, so the difficulty they share cancels. Decisions come from the exact logits, never from
predictions.csv's rounded probabilities, so a paired Δ is the metrics.json difference exactly.
Outputs and how to read them: docs/evaluation.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serwild.errors import UsageError
from serwild.evaluate import health
from serwild.evaluate.document import Report, condition_label, order_conditions, read_report
from serwild.evaluate.figures import Interval, plot_differences, plot_series
from serwild.evaluate.report import (
    LOGITS_FILE,
    interval,
    protocol_line,
    read_logits,
    supports,
)
from serwild.evaluate.report import metric as get
from serwild.evaluate.uncertainty import arm_difference_ci, mean_std
from serwild.metrics import METRICS, chance_level, utterance_logits
from serwild.processes import atomic


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_runs` wrote, for callers to use without reading it back."""

    out: Path  # the folder: compare.md, compare.json, compare.png, difference.png
    table: dict[str, Any]  # compare.json's content: conditions, values, std, deltas, flags, runs, …
    markdown: str  # compare.md's text


# ----------------------------------------------------------------------------- library


def find_metrics(run: str | Path) -> Path:
    """``run`` may be a run folder, its report folder, or a metrics.json file."""
    p = Path(run)
    for candidate in (p / "report" / "metrics.json", p / "metrics.json", p):
        if candidate.is_file():
            return candidate
    raise UsageError(f"run {run}: no report/metrics.json; evaluate it first "
                     f"(serwild evaluate --checkpoint {p / 'best.pt'})")


def load_metrics(run: str | Path) -> Report:
    return read_report(find_metrics(run), f"run {run}: ")


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


def comparison(reports: Mapping[str, Report], metric: str = "weighted_f1",
               unit: str = "block") -> dict[str, Any]:
    """``{"conditions": [...], "labels": [...], "values": {run: [v or None]}}`` in condition order."""
    snr: dict[str, float | None] = {}
    for rep in reports.values():
        for c, v in rep.conditions.items():
            snr.setdefault(c, v.get("snr_db"))
    conds = order_conditions(snr)
    values = {name: [get(rep.conditions[c][unit], METRICS[metric].path) if c in rep.conditions else None
                     for c in conds] for name, rep in reports.items()}
    return {"metric": metric, "unit": unit, "conditions": conds,
            "labels": [condition_label(c, snr[c]) for c in conds], "values": values}


def plot_intervals(reports: Mapping[str, Sequence[Report]], conds: Sequence[str],
                   comp: Mapping[str, Any], metric: str, unit: str) -> dict[str, list[Interval]]:
    """Error bars per arm: a single run's 95 % bootstrap interval (from its report), or the
    mean ± std of several runs."""
    out: dict[str, list[Interval]] = {}
    for name, reps in reports.items():
        if len(reps) == 1:
            out[name] = [interval(reps[0].conditions[c][unit], metric) if c in reps[0].conditions else None
                         for c in conds]
        else:
            out[name] = [None if m is None or s is None else (m - s, m + s)
                         for m, s in zip(comp["values"][name], comp["std"][name])]
    return out


def markdown_table(comp: Mapping[str, Any]) -> str:
    """Rows = test conditions; one column per arm (mean ± std for several runs), then each arm
    minus the first (baseline), with its paired interval and ``*`` where it excludes 0."""
    names = list(comp["values"])
    base = names[0]
    n_runs = comp.get("n_runs") or {}
    stds = comp.get("std") or {n: [None] * len(comp["labels"]) for n in names}
    deltas = comp.get("deltas") or {n: [None] * len(comp["labels"]) for n in names}
    head = ["Test condition"] + names + [f"Δ {n} − {base}" for n in names[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, label in enumerate(comp["labels"]):
        vals = [comp["values"][n][i] for n in names]
        cells = [label] + [_value_cell(v, stds[n][i], n_runs.get(n, 1)) for n, v in zip(names, vals)]
        cells += [_delta_cell(v, vals[0], deltas[n][i], _flagged(comp, base) or _flagged(comp, n))
                  for n, v in zip(names[1:], vals[1:])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _value_cell(v: float | None, std: float | None, n_runs: int) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if n_runs < 2 or std is None else f"{v:.3f} ± {std:.3f}"


def _flagged(comp: Mapping[str, Any], arm: str) -> bool:
    """The arm's model has a health warning (a class never predicted, at chance, one class)."""
    return bool((comp.get("flags") or {}).get(arm))


def _delta_cell(v: float | None, base: float | None, d: Mapping[str, Any] | None, flagged: bool = False) -> str:
    if v is None or base is None:
        return "—"
    if not d or "low" not in d:
        return f"{v - base:+.3f}"
    star = (" * ⚠" if flagged else " *") if d["excludes_zero"] else ""
    return f"{v - base:+.3f} [{d['low']:+.2f}, {d['high']:+.2f}]{star}"


def notes(comp: Mapping[str, Any]) -> list[str]:
    """The sentences under the table: what Δ, the brackets, ``*`` and ± mean."""
    names = list(comp["values"])
    u = comp.get("uncertainty") or {}
    out = [f"Δ = arm − baseline ({names[0]}), {METRICS[comp['metric']].title} per {comp['unit']}."]
    if any("low" in (d or {}) for ds in (comp.get("deltas") or {}).values() for d in ds):
        out.append(f"Brackets: {u.get('level', 0.95):.0%} paired cluster-bootstrap interval of the difference "
                   f"({u.get('n_resamples')} resamples of the test utterances, seed {u.get('seed')}; both arms "
                   f"scored on the same resampled utterances); `*` marks an interval that excludes 0, i.e. a "
                   f"difference unlikely to come only from which utterances happened to be in the test set.")
    stars = [n for n, ds in (comp.get("deltas") or {}).items() if any((d or {}).get("excludes_zero") for d in ds)]
    if any(_flagged(comp, names[0]) or _flagged(comp, n) for n in stars):
        out.append("`* ⚠`: the interval excludes 0, but one of the two models has a health warning (above): a "
                   "difference between models that have not learnt every class is not evidence of robustness.")
    if any(n > 1 for n in (comp.get("n_runs") or {}).values()):
        out.append("An arm of several runs (seeds or folds) shows the mean ± std (ddof 1) over its runs; its "
                   "interval is for the difference of the arms' means on these test utterances and does "
                   "not include the run-to-run spread: compare that with the ± std.")
    for n, why in (comp.get("unpaired") or {}).items():
        out.append(f"No interval for {n}: {why}.")
    return out


def parse_arms(groups: Sequence[Sequence[str]]) -> dict[str, list[str]]:
    """``[["clean", "runs/a-s0", "runs/a-s1"], ["augmented", …]]`` (repeated ``--arm NAME RUN…``)
    → ``{name: runs}``, checked: every arm has a name and at least one run, names are unique."""
    arms: dict[str, list[str]] = {}
    for g in groups:
        if len(g) < 2:
            raise UsageError(f"--arm {' '.join(g)}: give a name and at least one run (--arm NAME RUN [RUN …])")
        if g[0] in arms:
            raise UsageError(f"--arm {g[0]} is given twice")
        arms[g[0]] = list(g[1:])
    return arms


# ----------------------------------------------------------------------------- the scored blocks


def find_logits(run: str | Path) -> Path | None:
    """The logits.npz next to a run's metrics.json (None when the report has none)."""
    p = find_metrics(run).parent / LOGITS_FILE
    return p if p.is_file() else None


def load_decisions(path: Path, classes: Sequence[str], unit: str) -> dict[str, dict[str, Any]]:
    """condition → ``{"keys", "true", "pred", "groups"}`` per ``unit``, sorted by sample, from a
    run's exact logits: per block their argmax, per utterance the argmax of the mean of its
    blocks' logits (serwild.metrics.utterance_logits): the decisions its metrics.json scored."""
    found, outputs = read_logits(path)
    if found != list(classes):
        raise UsageError(f"{path} holds classes {found}, its metrics.json {list(classes)}")
    out = {}
    for cond, o in outputs.items():
        order = sorted(range(len(o["labels"])), key=lambda i: (o["utterances"][i], o["blocks"][i]))
        utts = [o["utterances"][i] for i in order]
        logits, labels = o["logits"][order], o["labels"][order]
        if unit == "block":
            out[cond] = {"keys": list(zip(utts, [o["blocks"][i] for i in order])), "true": labels,
                         "pred": np.argmax(logits, axis=1), "groups": utts}
            continue
        try:
            u_logits, u_labels, ids = utterance_logits(logits, labels, utts)
        except ValueError as e:  # blocks of one utterance with two labels: a damaged file
            raise UsageError(f"{path}: {cond}: {e}") from None
        out[cond] = {"keys": ids, "true": u_labels, "pred": np.argmax(u_logits, axis=1), "groups": ids}
    return out


def paired_deltas(arms: Mapping[str, Sequence[str | Path]], reports: Mapping[str, Sequence[Report]],
                  conditions: Sequence[str], metric: str, unit: str, n_resamples: int, seed: int,
                  alpha: float) -> tuple[dict[str, list[dict[str, Any] | None]], dict[str, str]]:
    """Each non-baseline arm's paired interval per condition, and why an arm has none."""
    names = list(arms)
    base = names[0]
    deltas: dict[str, list[dict[str, Any] | None]] = {n: [None] * len(conditions) for n in names[1:]}
    unpaired: dict[str, str] = {}
    if n_resamples < 1:
        return deltas, {n: "intervals are off (bootstrap = 0)" for n in names[1:]}
    prints = {rep.manifest_fingerprint for reps in reports.values() for rep in reps}
    classes = {tuple(rep.classes) for reps in reports.values() for rep in reps}
    if len(prints) != 1 or None in prints or len(classes) != 1:
        why = (f"the runs were evaluated on different builds (manifest fingerprints "
               f"{', '.join(sorted(str(p)[:12] for p in prints))}), so their test blocks cannot be paired")
        return deltas, {n: why for n in names[1:]}
    preds: dict[str, list[dict[str, dict[str, Any]]]] = {}
    for n, runs in arms.items():
        preds[n] = []
        for r in runs:
            path = find_logits(r)
            if path is None:
                return deltas, {m: f"{find_metrics(r).parent} has no {LOGITS_FILE} (re-run serwild evaluate)"
                                for m in names[1:]}
            preds[n].append(load_decisions(path, list(next(iter(classes))), unit))
    for n in names[1:]:
        for i, cond in enumerate(conditions):
            parts = [p.get(cond) for p in preds[base] + preds[n]]
            if any(p is None for p in parts):
                continue
            ref = parts[0]
            if any(p["keys"] != ref["keys"] or not np.array_equal(p["true"], ref["true"]) for p in parts[1:]):
                unpaired[n] = f"its runs and the baseline's scored different test blocks of {cond}"
                continue
            d = arm_difference_ci(ref["true"], [p["pred"] for p in parts[:len(preds[base])]],
                                  [p["pred"] for p in parts[len(preds[base]):]], ref["groups"], metric,
                                  n_resamples=n_resamples, seed=seed, alpha=alpha, n_classes=len(next(iter(classes))))
            deltas[n][i] = d
    return deltas, unpaired


# ----------------------------------------------------------------------------- the comparison


def compare_runs(runs: Sequence[str | Path] = (), out: str | Path | None = None, metric: str = "weighted_f1",
                 unit: str = "block", arms: Mapping[str, Sequence[str | Path]] | None = None,
                 bootstrap: int = 1000, seed: int = 0, alpha: float = 0.05) -> Comparison:
    """Write compare.png / difference.png / compare.md / compare.json; returns what they hold.

    ``runs``: one arm per run (named after its folder); or ``arms``: ``{name: [runs]}``.
    """
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r} (choose from {', '.join(sorted(METRICS))})")
    if arms and runs:
        raise UsageError("give the runs either as positional arguments or as --arm groups, not both")
    if not arms:
        arms = {n: [r] for n, r in zip(run_names(runs), runs)}
    if any(not rs for rs in arms.values()):
        raise UsageError("every arm needs at least one run")
    reports = {n: [load_metrics(r) for r in rs] for n, rs in arms.items()}
    comp = arm_comparison(reports, metric, unit)
    deltas, unpaired = paired_deltas(arms, reports, comp["conditions"], metric, unit, bootstrap, seed, alpha)
    comp.update({"baseline": next(iter(arms)), "deltas": deltas, "unpaired": unpaired,
                 "flags": {n: flag_lines(n, rs, reports[n]) for n, rs in arms.items()},
                 "uncertainty": {"method": "paired percentile cluster bootstrap over utterances",
                                 "level": 1.0 - alpha, "n_resamples": bootstrap, "seed": seed, "alpha": alpha}})
    names = list(arms)
    out_dir = Path(out) if out is not None else default_out([rs[0] for rs in arms.values()], names)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_series(out_dir / "compare.png", comp["labels"], comp["values"], METRICS[metric].title,
                plot_intervals(reports, comp["conditions"], comp, metric, unit), chance=comp["chance"])
    plot_differences(out_dir / "difference.png", comp["labels"],
                     {f"{n} − {names[0]}": pts for n, pts in difference_points(comp).items()},
                     f"Δ {METRICS[metric].title}")
    markdown = render_compare(comp, arms, reports)
    atomic.write_text(out_dir / "compare.md", markdown)
    table = {**comp, "runs": {name: [str(find_metrics(r)) for r in rs] for name, rs in arms.items()}}
    atomic.write_json(out_dir / "compare.json", table)
    return Comparison(out_dir, table, markdown)


def arm_comparison(reports: Mapping[str, Sequence[Report]], metric: str, unit: str) -> dict[str, Any]:
    """Per arm and condition: the mean (and std) of its runs' ``metric``; chance per condition."""
    per_run = comparison({f"{n}#{i}": rep for n, reps in reports.items() for i, rep in enumerate(reps)}, metric,
                         unit)
    conds = per_run["conditions"]
    values: dict[str, list[float | None]] = {}
    stds: dict[str, list[float | None]] = {}
    for n, reps in reports.items():
        values[n], stds[n] = [], []
        for i in range(len(conds)):
            vs = [per_run["values"][f"{n}#{j}"][i] for j in range(len(reps))]
            ms = mean_std(vs) if None not in vs else None
            values[n].append(None if ms is None else ms["mean"])
            stds[n].append(None if ms is None else ms["std"])
    first = next(iter(reports.values()))[0].conditions
    chance = [chance_level(metric, supports(first[c][unit])) if c in first else None for c in conds]
    return {**per_run, "values": values, "std": stds, "n_runs": {n: len(rs) for n, rs in reports.items()},
            "chance": chance}


def flag_lines(name: str, runs: Sequence[str | Path], reports: Sequence[Report]) -> list[str]:
    """The health flags of each run of an arm (serwild.evaluate.health), named after the arm."""
    lines = []
    for r, rep in zip(runs, reports):
        label = name if len(runs) == 1 else f"{name} ({run_dir(r).name})"
        lines += health.flag_lines(label, rep)
    return lines


def difference_points(comp: Mapping[str, Any]) -> dict[str, list[dict[str, Any] | None]]:
    """Per non-baseline arm and condition: the paired interval, or the bare difference where
    there is none (unpaired runs, intervals off)."""
    names = list(comp["values"])
    out: dict[str, list[dict[str, Any] | None]] = {}
    for n in names[1:]:
        points: list[dict[str, Any] | None] = []
        for i, (v, b) in enumerate(zip(comp["values"][n], comp["values"][names[0]])):
            d = (comp.get("deltas") or {}).get(n, [None] * len(comp["labels"]))[i]
            points.append(d if d and "low" in d else None if v is None or b is None else {"delta": v - b})
        out[n] = points
    return out


def render_compare(comp: Mapping[str, Any], arms: Mapping[str, Sequence[str | Path]],
                   reports: Mapping[str, Sequence[Report]]) -> str:
    """compare.md: flags, the table, its notes, the two figures with captions, the runs."""
    title, unit = METRICS[comp["metric"]].title, comp["unit"]
    flags = [f"> {line}" for lines in comp["flags"].values() for line in lines]
    lines = [f"# Comparison: {title} per test condition (per {unit})", "", *flags, *([""] if flags else []),
             markdown_table(comp), "", *notes(comp)]
    datasets = {rep.dataset for reps in reports.values() for rep in reps}
    if len(datasets) > 1:
        names = ", ".join(map(str, datasets))
        lines += ["", f"**Warning:** these runs were evaluated on different datasets ({names})."]
    lines += ["", "![comparison](compare.png)", "", figure_caption(comp, datasets, "Figure 1"), "",
              "![paired differences](difference.png)", "", difference_caption(comp, "Figure 2"), "", "## Runs", ""]
    for name, rs in arms.items():
        for r, rep in zip(rs, reports[name]):
            what = protocol_line(rep).replace("**Protocol:** ", "")
            lines.append(f"- **{name}** (`{find_metrics(r)}`): {what}")
    return "\n".join(lines) + "\n"


def figure_caption(comp: Mapping[str, Any], datasets: set[Any], label: str = "Figure") -> str:
    several = any(n > 1 for n in comp["n_runs"].values())
    bars = ("a run's 95 % cluster-bootstrap interval" + (", or ± std over an arm's runs" if several else ""))
    title = METRICS[comp["metric"]].title
    return (f"*{label}. {title[0].upper() + title[1:]} per test condition "
            f"({'/'.join(sorted(map(str, datasets))).upper()}, per {comp['unit']}), one bar per arm; error bars: "
            f"{bars}; dashed: chance (a guess that picks each class with probability 1/K).*")


def difference_caption(comp: Mapping[str, Any], label: str = "Figure") -> str:
    return (f"*{label}. Each arm minus the baseline ({comp['baseline']}), {METRICS[comp['metric']].title} per "
            f"{comp['unit']}, per test condition, with its {comp['uncertainty']['level']:.0%} paired "
            "cluster-bootstrap interval (both arms scored on the same resampled test utterances). A filled marker "
            "is an interval that excludes 0 (`*` in the table); a point without a bar has no paired interval "
            "(see the notes above).*")


def default_out(runs: Sequence[str | Path], names: Sequence[str]) -> Path:
    stem = "compare_" + "_vs_".join(n.replace(" ", "") for n in names)
    return run_dir(runs[0]).parent / (stem if len(stem) <= 100 else "compare")
