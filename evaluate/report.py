"""The report folder: metrics.json, report.md (the paper's Tables 5/6), and figures.

    <run>/report/
      metrics.json           every number, per condition, per block and per utterance, each unit's
                             95 % intervals under "ci" (cluster bootstrap over utterances; see
                             "uncertainty" for how; absent with eval.bootstrap=0)
      report.md              protocol line + tables (rows = test conditions, columns = metrics)
      confusion-<cond>.png   confusion matrices (per block | per utterance), one file per condition
      weighted_f1.png        weighted F1 per test condition (per block and per utterance)
      predictions.csv        every scored block: condition, utterance, block, true, predicted, probs

Plots use matplotlib's object API (no pyplot, no global backend state), so writing a
report never needs a display; every file is written atomically.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from serwild import atomic

UNITS = {"block": "Per 1 s block (the paper's unit)",
         "utterance": "Per utterance (mean of its block logits)"}

# (column title, getter) for the main table; the paper reports accuracy and weighted P/R/F1.
COLUMNS: list[tuple[str, str]] = [
    ("WA (accuracy)", "wa"), ("UA (macro recall)", "ua"),
    ("Weighted P", "weighted.precision"), ("Weighted R", "weighted.recall"),
    ("Weighted F1", "weighted.f1"), ("Macro F1", "macro.f1"),
]
# metric path → its name in a unit's "ci" entry (serwild.evaluate.uncertainty.METRICS)
CI_NAMES = {"wa": "wa", "ua": "ua", "weighted.precision": "weighted_precision", "weighted.recall": "weighted_recall",
            "weighted.f1": "weighted_f1", "macro.f1": "macro_f1", "macro.precision": "macro_precision",
            "macro.recall": "macro_recall"}


def metric(m: Mapping[str, Any], path: str) -> float:
    """``metric(m, "weighted.f1")`` → m["weighted"]["f1"]."""
    node: Any = m
    for part in path.split("."):
        node = node[part]
    return float(node)


def interval(m: Mapping[str, Any], path: str) -> tuple[float, float] | None:
    """The (low, high) interval of ``metric(m, path)`` from the unit's ``ci`` entry, if any."""
    ci = (m.get("ci") or {}).get(CI_NAMES.get(path, path))
    return None if ci is None else (float(ci["low"]), float(ci["high"]))


def cell(m: Mapping[str, Any], path: str) -> str:
    """``0.612 [0.571, 0.650]``, or ``0.612`` when the report has no interval."""
    ci = interval(m, path)
    value = f"{metric(m, path):.3f}"
    return value if ci is None else f"{value} [{ci[0]:.3f}, {ci[1]:.3f}]"


def interval_note(result: Mapping[str, Any]) -> str:
    """One sentence on how the bracketed intervals were computed ('' when there are none)."""
    u = result.get("uncertainty")
    if not u:
        return ""
    return (f"Brackets: {u['level']:.0%} percentile interval from a cluster bootstrap ({u['n_resamples']} "
            f"resamples of the test utterances with replacement, each keeping all of its blocks; seed "
            f"{u['seed']}), so it reflects how much the score depends on which utterances happened to be "
            f"in the test set, not the run-to-run variation of training.")


def condition_label(name: str, snr_db: float | None) -> str:
    if snr_db is None:
        return name
    return f"{snr_db:g} dB"


def order_conditions(conditions: Mapping[str, float | None]) -> list[str]:
    """Clean first, then ascending SNR (the paper's order: clean, 15, 20, 40 dB)."""
    return sorted(conditions, key=lambda c: (conditions[c] is not None, conditions[c] or 0.0, c))


# ----------------------------------------------------------------------------- text


def protocol_line(result: Mapping[str, Any]) -> str:
    p = result["protocol"]
    fold = p.get("fold")
    fold_text = "all train folds" if fold is None else f"fold {fold} held out for validation"
    recipe = p.get("recipe") or {}
    recipe_text = ", ".join(f"{k}={_short(v)}" for k, v in recipe.items()) if recipe else "n/a"
    return (f"**Protocol:** dataset {p['dataset'].upper()} ({', '.join(result['classes'])}); "
            f"split `{p.get('split_strategy')}`; trained on {', '.join(p.get('train_conditions') or [])}; "
            f"{fold_text}; pretrained `{p.get('pretrained')}`; recipe: {recipe_text}; "
            f"checkpoint epoch {p.get('epoch')}.")


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(_short(x) for x in v) + "]"
    if isinstance(v, dict):
        return "(" + " ".join(f"{k}={_short(x)}" for k, x in v.items()) + ")"
    return str(v)


def metrics_table(result: Mapping[str, Any], unit: str) -> str:
    """Markdown table: rows = test conditions, columns = metrics (the paper's Tables 5/6)."""
    head = ["Test condition", "N"] + [title for title, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    conds = result["conditions"]
    for name in order_conditions({c: v["snr_db"] for c, v in conds.items()}):
        m = conds[name][unit]
        cells = [condition_label(name, conds[name]["snr_db"]), str(m["n"])]
        cells += [cell(m, key) for _, key in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_class_table(result: Mapping[str, Any], unit: str) -> str:
    head = ["Test condition", "Class", "Precision", "Recall", "F1", "Support"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    conds = result["conditions"]
    for name in order_conditions({c: v["snr_db"] for c, v in conds.items()}):
        for cls, s in conds[name][unit]["per_class"].items():
            lines.append(f"| {condition_label(name, conds[name]['snr_db'])} | {cls} | {s['precision']:.3f} "
                         f"| {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |")
    return "\n".join(lines)


def render_markdown(result: Mapping[str, Any]) -> str:
    conds = result["conditions"]
    order = order_conditions({c: v["snr_db"] for c, v in conds.items()})
    parts = [
        f"# Evaluation: {result['run']}",
        "",
        protocol_line(result),
        "",
        f"Checkpoint `{result['checkpoint']}`; test shards `{result['shards']}` "
        f"(manifest fingerprint `{str(result['manifest_fingerprint'])[:12]}`); every test sample of each "
        f"condition scored exactly once (checked against the manifest), {result['world_size']} process(es).",
        "",
    ]
    for unit, title in UNITS.items():
        parts += [f"## {title}", "", metrics_table(result, unit), ""]
    if interval_note(result):
        parts += [interval_note(result), ""]
    parts += [
        "WA = overall accuracy (equals weighted recall); UA = mean of per-class recalls; weighted "
        "P/R/F1 average the classes by support (the paper's columns), macro by equal weight. "
        "Per-utterance scores average the block logits of each utterance's *test* blocks.",
        "",
        "![weighted F1 per test condition](weighted_f1.png)",
        "",
        "## Confusion matrices (rows = true class, columns = predicted)",
        "",
    ]
    parts += [f"![{c}](confusion-{c}.png)" for c in order]
    for unit, title in UNITS.items():
        parts += ["", f"## Per class, {title[0].lower() + title[1:]}", "", per_class_table(result, unit)]
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- figures


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=110)


def plot_confusions(path: Path, title: str, matrices: Mapping[str, Sequence[Sequence[int]]],
                    classes: Sequence[str]) -> None:
    """One panel per unit; colour = row-normalised rate, text = counts."""
    fig = _figure(4.2 * len(matrices), 4.0)
    for i, (unit, cm) in enumerate(matrices.items()):
        ax = fig.add_subplot(1, len(matrices), i + 1)
        cm_arr = np.asarray(cm, dtype=np.float64)
        rates = cm_arr / np.maximum(cm_arr.sum(axis=1, keepdims=True), 1.0)
        ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
        for (r, c), n in np.ndenumerate(cm_arr):
            ax.text(c, r, f"{int(n)}", ha="center", va="center",
                    color="white" if rates[r, c] > 0.6 else "black", fontsize=9)
        ax.set_xticks(range(len(classes)), labels=list(classes))
        ax.set_yticks(range(len(classes)), labels=list(classes))
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"per {unit}")
    fig.suptitle(title)
    fig.tight_layout()
    atomic.save_figure(fig, path)


Interval = tuple[float, float] | None  # (low, high) of a 95 % interval, or unknown


def plot_series(path: Path, categories: Sequence[str], series: Mapping[str, Sequence[float | None]],
                ylabel: str, title: str, intervals: Mapping[str, Sequence[Interval]] | None = None) -> None:
    """Grouped bars: one group per category (test condition), one bar per series, values on top;
    ``intervals`` (per series, per category) are drawn as error bars."""
    fig = _figure(max(5.0, 1.3 * len(categories) * max(1, len(series)) ** 0.5 + 2.0), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(series))
    x = np.arange(len(categories))
    for i, (name, values) in enumerate(series.items()):
        ys = [np.nan if v is None else v for v in values]
        spans = (intervals or {}).get(name) or [None] * len(ys)
        yerr = np.array([[0.0, 0.0] if s is None or np.isnan(y) else [max(0.0, y - s[0]), max(0.0, s[1] - y)]
                         for y, s in zip(ys, spans)]).T
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, ys, width, label=name,
                      yerr=yerr if intervals else None, capsize=3, error_kw={"elinewidth": 1, "alpha": 0.7})
        ax.bar_label(bars, labels=["" if v is None else f"{v:.2f}" for v in values], fontsize=8, padding=2)
    ax.set_xticks(x, labels=list(categories))
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("test condition")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    atomic.save_figure(fig, path)


def ci_span(unit_metrics: Mapping[str, Any], name: str) -> Interval:
    """The (low, high) interval of metric ``name`` in one unit's metrics, if evaluate wrote one."""
    ci = (unit_metrics.get("ci") or {}).get(name)
    return (float(ci["low"]), float(ci["high"])) if ci else None


# ----------------------------------------------------------------------------- the folder


def write_report(result: Mapping[str, Any], out: str | Path,
                 predictions: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Write metrics.json, report.md, the figures and (if given) predictions.csv into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    conds = result["conditions"]
    order = order_conditions({c: v["snr_db"] for c, v in conds.items()})
    for name in order:
        label = condition_label(name, conds[name]["snr_db"])
        plot_confusions(out / f"confusion-{name}.png", f"{result['run']}: {label}",
                        {u: conds[name][u]["confusion"] for u in UNITS}, result["classes"])
    plot_series(out / "weighted_f1.png", [condition_label(c, conds[c]["snr_db"]) for c in order],
                {f"per {u}": [conds[c][u]["weighted"]["f1"] for c in order] for u in UNITS},
                "weighted F1", f"{result['run']}: weighted F1 per test condition (bars: 95 % intervals)",
                {f"per {u}": [ci_span(conds[c][u], "weighted_f1") for c in order] for u in UNITS})
    if predictions:
        write_predictions(out / "predictions.csv", predictions, result["classes"])
    atomic.write_text(out / "report.md", render_markdown(result))
    return out


def write_predictions(path: Path, rows: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> None:
    with atomic.atomic_write(path, "w") as f:
        w = csv.writer(f)
        w.writerow(["condition", "utterance", "block", "true", "predicted"] + [f"p_{c}" for c in classes])
        for r in rows:
            w.writerow([r["condition"], r["utterance"], r["block"], classes[r["true"]], classes[r["pred"]]]
                       + [f"{p:.4f}" for p in r["probs"]])
