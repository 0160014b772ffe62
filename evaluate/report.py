"""The report folder: metrics.json, report.md (the paper's Tables 5/6), figures and the scored blocks.

predictions.csv is for reading (probabilities rounded to 4 decimals); logits.npz holds the same rows
with the exact float32 logits, plain arrays, and is what ``serwild compare`` pairs runs on. Figures
have no titles: their captions are in report.md, under each figure. The folder: docs/evaluation.md.
"""

from __future__ import annotations

import csv
import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serwild.errors import UsageError
from serwild.evaluate import health, provenance
from serwild.evaluate.document import Report, condition_label, order_conditions
from serwild.evaluate.figures import plot_confusions, plot_series
from serwild.metrics import BY_PATH, METRICS, Metric, chance_level
from serwild.processes import atomic

UNITS = {"block": "Per 1 s block (the paper's unit)",
         "utterance": "Per utterance (mean of its block logits)"}

# The main table's columns: the paper reports accuracy and weighted P/R/F1; UA and macro F1 are the field's.
COLUMNS: list[Metric] = [METRICS[n] for n in ("wa", "ua", "weighted_precision", "weighted_recall", "weighted_f1",
                                              "macro_f1")]
LOGITS_FILE = "logits.npz"


def metric(m: Mapping[str, Any], path: str) -> float:
    """``metric(m, "weighted.f1")`` → m["weighted"]["f1"]."""
    node: Any = m
    for part in path.split("."):
        node = node[part]
    return float(node)


def interval(m: Mapping[str, Any], path: str) -> tuple[float, float] | None:
    """The (low, high) interval of ``metric(m, path)`` from the unit's ``ci`` entry, if any."""
    ci = (m.get("ci") or {}).get(BY_PATH[path].name if path in BY_PATH else path)
    return None if ci is None else (float(ci["low"]), float(ci["high"]))


def cell(m: Mapping[str, Any], path: str) -> str:
    """``0.612 [0.571, 0.650]``, or ``0.612`` when the report has no interval."""
    ci = interval(m, path)
    value = f"{metric(m, path):.3f}"
    return value if ci is None else f"{value} [{ci[0]:.3f}, {ci[1]:.3f}]"


def interval_note(result: Report) -> str:
    """One sentence on how the bracketed intervals were computed ('' when there are none)."""
    u = result.uncertainty
    if not u:
        return ""
    return (f"Brackets: {u['level']:.0%} percentile interval from a cluster bootstrap ({u['n_resamples']} "
            f"resamples of the test utterances with replacement, each keeping all of its blocks; seed "
            f"{u['seed']}), so it reflects how much the score depends on which utterances happened to be "
            f"in the test set, not the run-to-run variation of training.")


# ----------------------------------------------------------------------------- text


def protocol_line(result: Report) -> str:
    p = result.protocol
    fold = p.get("fold")
    fold_text = "all train folds" if fold is None else f"fold {fold} held out for validation"
    recipe = p.get("recipe") or {}
    recipe_text = ", ".join(f"{k}={_short(v)}" for k, v in recipe.items()) if recipe else "n/a"
    speakers = p.get("test_speakers")
    held = f" (test speakers, unseen in training: {', '.join(speakers)})" if speakers else ""
    return (f"**Protocol:** dataset {p['dataset'].upper()} ({', '.join(result.classes)}); "
            f"split `{p.get('split_strategy')}`{held}; trained on {', '.join(p.get('train_conditions') or [])}; "
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


def metrics_table(result: Report, unit: str) -> str:
    """Markdown table: rows = test conditions, columns = metrics (the paper's Tables 5/6)."""
    head = ["Test condition", "N"] + [c.column for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    conds = result.conditions
    for name in order_conditions(conds):
        m = conds[name][unit]
        cells = [condition_label(name, conds[name]["snr_db"]), str(m["n"])]
        cells += [cell(m, c.path) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_class_table(result: Report, unit: str) -> str:
    head = ["Test condition", "Class", "Precision", "Recall", "F1", "Support"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    conds = result.conditions
    for name in order_conditions(conds):
        for cls, s in conds[name][unit]["per_class"].items():
            lines.append(f"| {condition_label(name, conds[name]['snr_db'])} | {cls} | {s['precision']:.3f} "
                         f"| {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |")
    return "\n".join(lines)


def flag_block(result: Report) -> list[str]:
    """The model's flags (serwild.evaluate.health) and the smoke-size caveat, as blockquotes."""
    lines = [f"> ⚠ **{m.split(':', 1)[0]}**:{m.split(':', 1)[1]}" for m in health.model_flags(result)["messages"]]
    smoke = result.smoke_note or ""
    return [*lines, *([f"> {smoke}"] if smoke else [])]


def test_set_line(result: Report) -> str:
    """``**Test set (N per condition):** clean 165 blocks / 55 utterances; 15 dB …``."""
    conds = result.conditions
    order = order_conditions(conds)
    return ("**Test set (N per condition):** " + "; ".join(
        f"{condition_label(c, conds[c]['snr_db'])} {conds[c]['block']['n']} blocks / "
        f"{conds[c]['utterance']['n']} utterances" for c in order) + ".")


def provenance_lines(result: Report) -> list[str]:
    """Budget, test-set size and software: what a number needs to be read months later."""
    return [f"**Training budget:** {provenance.budget_line(result.budget)}.", "",
            test_set_line(result), "",
            f"**Software:** {provenance.versions_line(result.versions)}; "
            f"{result.world_size or '?'} process(es) on `{result.device or '?'}`.", ""]


def render_markdown(result: Report) -> str:
    flags = flag_block(result)
    parts = [f"# Evaluation: {result.run}", "", *flags, *([""] if flags else []), protocol_line(result), "",
             *provenance_lines(result),
             f"Checkpoint `{result.checkpoint}`; test shards `{result.shards}` "
             f"(manifest fingerprint `{str(result.manifest_fingerprint)[:12]}`); every test sample of each "
             "condition scored exactly once (checked against the manifest).", ""]
    for unit, title in UNITS.items():
        parts += [f"## {title}", "", metrics_table(result, unit), ""]
    if interval_note(result):
        parts += [interval_note(result), ""]
    bars = "95 % intervals (see above)" if result.uncertainty else "no intervals (eval.bootstrap=0)"
    parts += [
        "WA = overall accuracy (equals weighted recall); UA = mean of per-class recalls; weighted "
        "P/R/F1 average the classes by support (the paper's columns), macro by equal weight. "
        "Per-utterance scores average the block logits of each utterance's *test* blocks.",
        "", "## Figures", "",
        "![weighted F1 per test condition](weighted_f1.png)", "",
        f"*Figure 1. Weighted F1 of `{result.run}` per test condition, per 1 s block and per utterance; error "
        f"bars: {bars}; dashed: chance, the weighted F1 of a guess that picks each class with probability 1/K "
        "(it depends on the class balance).*", "",
        "![confusion matrices](confusion.png)", "",
        f"*Figure 2. Confusion matrices of `{result.run}` per test condition, per 1 s block (rows = true class, "
        "columns = predicted). Colour and upper number: the share of the true class given each label (each row "
        "sums to 1; the diagonal is per-class recall); lower number: blocks.*",
    ]
    for unit, title in UNITS.items():
        parts += ["", f"## Per class, {title[0].lower() + title[1:]}", "", per_class_table(result, unit)]
    parts += groups_section(result)
    return "\n".join(parts) + "\n"


def groups_section(result: Report) -> list[str]:
    """``eval.group_by``: weighted F1 and UA per value of the corpus's column, per condition (blocks)."""
    conds = result.conditions
    order = [c for c in order_conditions(conds) if conds[c].get("groups")]
    if not order:
        return []
    by = conds[order[0]]["groups"]["by"]
    values = sorted({v for c in order for v in conds[c]["groups"]["values"]})
    lines = ["", f"## By {by}, per 1 s block", "",
             "| " + " | ".join([by, *(condition_label(c, conds[c].get("snr_db")) for c in order)]) + " |",
             "|" + "---|" * (len(order) + 1)]
    for v in values:
        cells = []
        for c in order:
            m = conds[c]["groups"]["values"].get(v)
            cells.append("—" if m is None else f"wF1 {m['weighted']['f1']:.3f}, UA {m['ua']:.3f} (n={m['n']})")
        lines.append("| " + " | ".join([v or "(none)", *cells]) + " |")
    return [*lines, "", "No intervals here: each value's subset is smaller than the condition; read them as a "
            "guide to where the errors are."]


# ----------------------------------------------------------------------------- figures


def supports(unit_metrics: Mapping[str, Any]) -> list[int]:
    """Test samples per class (in class order) of one unit's metrics."""
    return [int(c["support"]) for c in (unit_metrics.get("per_class") or {}).values()]


def write_figures(result: Report, out: Path) -> None:
    """weighted_f1.png (both units, intervals, chance) and confusion.png (a panel per condition)."""
    conds = result.conditions
    order = order_conditions(conds)
    labels = [condition_label(c, conds[c]["snr_db"]) for c in order]
    plot_series(out / "weighted_f1.png", labels,
                {f"per {u}": [conds[c][u]["weighted"]["f1"] for c in order] for u in UNITS}, "weighted F1",
                {f"per {u}": [interval(conds[c][u], "weighted_f1") for c in order] for u in UNITS},
                chance=[chance_level("weighted_f1", supports(conds[c]["block"])) for c in order])
    plot_confusions(out / "confusion.png", {lab: conds[c]["block"]["confusion"] for lab, c in zip(labels, order)},
                    result.classes)


# ----------------------------------------------------------------------------- the folder


def write_report(result: Report, out: str | Path,
                 outputs: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write metrics.json, report.md, the figures and (given ``outputs``, condition → the scored
    blocks' ``logits``, ``labels``, ``utterances`` and ``blocks``) predictions.csv and logits.npz."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "metrics.json", json.dumps(result.to_dict(), indent=2) + "\n")
    write_figures(result, out)
    if outputs:
        write_predictions(out / "predictions.csv", outputs, result.classes)
        write_logits(out / LOGITS_FILE, outputs, result.classes)
    atomic.write_text(out / "report.md", render_markdown(result))
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))  # shifted: large logits must not overflow
    return e / e.sum(axis=1, keepdims=True)


def write_predictions(path: Path, outputs: Mapping[str, Mapping[str, Any]], classes: Sequence[str]) -> None:
    """predictions.csv: one row per block, for people (rounded); compare reads logits.npz."""
    # A list's own columns (intensity, sentence…) follow, so a reader can slice the scores by them.
    extra = sorted({k for o in outputs.values() for x in o.get("extra") or [] for k in x})
    with atomic.atomic_write(path, "w") as f:
        w = csv.writer(f)
        w.writerow(["condition", "utterance", "block", "true", "predicted"] + [f"p_{c}" for c in classes] + extra)
        for cond, o in outputs.items():
            more = o.get("extra") or [{}] * len(o["utterances"])
            for u, b, t, z, pr, x in zip(o["utterances"], o["blocks"], o["labels"], o["logits"],
                                         softmax(o["logits"]), more):
                w.writerow([cond, u, int(b), classes[int(t)], classes[int(np.argmax(z))]]
                           + [f"{p:.4f}" for p in pr] + [x.get(k, "") for k in extra])


def write_logits(path: Path, outputs: Mapping[str, Mapping[str, Any]], classes: Sequence[str]) -> None:
    """logits.npz: the rows of predictions.csv with the exact logits (plain arrays: no pickle to load)."""
    conds = list(outputs)
    arrays = {"classes": np.asarray(classes, dtype=str),
              "condition": np.asarray([c for c in conds for _ in outputs[c]["labels"]], dtype=str),
              "utterance": np.asarray([u for c in conds for u in outputs[c]["utterances"]], dtype=str),
              "block": np.asarray([b for c in conds for b in outputs[c]["blocks"]], dtype=np.int64),
              "label": np.concatenate([np.asarray(outputs[c]["labels"], dtype=np.int64) for c in conds]),
              "logits": np.concatenate([np.asarray(outputs[c]["logits"], dtype=np.float32) for c in conds])}
    with atomic.atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def read_logits(path: Path) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(classes, condition → ``{"utterances", "blocks", "labels", "logits"}``) of a logits.npz, rows
    in file order; a file that is not one is one line."""
    keys = ("classes", "condition", "utterance", "block", "label", "logits")
    try:
        with np.load(path, allow_pickle=False) as z:  # never unpickle what a file says
            a = {k: z[k] for k in keys}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise UsageError(f"{path} is not a serwild logits.npz ({type(e).__name__}: {e})") from None
    n, k = len(a["label"]), len(a["classes"])
    if a["logits"].shape != (n, k) or any(len(a[x]) != n for x in ("condition", "utterance", "block")):
        raise UsageError(f"{path} is not a serwild logits.npz (arrays of {n} rows and {k} classes disagree)")
    out: dict[str, dict[str, Any]] = {}
    for cond in dict.fromkeys(a["condition"].tolist()):
        rows = a["condition"] == cond
        out[cond] = {"utterances": a["utterance"][rows].tolist(), "blocks": a["block"][rows].tolist(),
                     "labels": a["label"][rows], "logits": a["logits"][rows]}
    return a["classes"].tolist(), out
