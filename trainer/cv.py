"""Cross-validation summary: per-fold best validation scores → mean ± std and the best fold.

``serwild train --cv`` trains ``<base>-fold{k}`` for every fold k, then writes
``runs/<base>-cv/cv.json`` and ``cv.md`` and puts the best fold's ``best.pt`` there too (the
paper tests "the best model" of its 5-fold cross-validation).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from serwild.errors import UsageError
from serwild.metrics import METRICS, VALIDATION, renamed
from serwild.processes import atomic
from serwild.processes.checkpoint import link_checkpoint
from serwild.trainer.history import read_jsonl

KEYS = VALIDATION  # the validation scores every epoch records (serwild.metrics)


def fold_result(run_dir: Path, metric: str) -> dict[str, Any]:
    """The epoch of one fold's run with the best validation ``metric`` (what its best.pt holds)."""
    # renamed: a fold trained by an earlier serwild wrote "accuracy" for wa
    records = [{**r, "val": renamed(r["val"])} for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("val")]
    if not records:
        raise UsageError(f"{run_dir}/metrics.jsonl has no validated epoch: did this fold's training finish?")
    best = records[0]
    for r in records[1:]:  # first epoch wins ties, as in training (strictly better replaces)
        if r["val"][metric] > best["val"][metric]:
            best = r
    return {"run": str(run_dir), "epoch": best["epoch"], "recipe": best.get("recipe"),
            **{k: best["val"][k] for k in KEYS}}


def summarise(runs_root: str | Path, base: str, folds: list[int], metric: str = "weighted_f1") -> dict[str, Any]:
    """Read every fold's run, write ``<runs_root>/<base>-cv/{cv.json,cv.md,best.pt}``; return the summary."""
    root = Path(runs_root)
    per_fold = {k: fold_result(root / f"{base}-fold{k}", metric) for k in folds}
    stats = {}
    for key in KEYS:
        values = [per_fold[k][key] for k in folds]
        stats[key] = {"mean": statistics.fmean(values),
                      "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    best_fold = max(folds, key=lambda k: (per_fold[k][metric], -k))
    out = root / f"{base}-cv"
    out.mkdir(parents=True, exist_ok=True)
    src = root / f"{base}-fold{best_fold}" / "best.pt"
    if not src.is_file():
        raise UsageError(f"{src} does not exist: fold {best_fold} scored best but has no best.pt to test "
                         f"(was its run folder cleaned?)")
    link_checkpoint(src, out / "best.pt")
    summary = {"base": base, "folds": {str(k): v for k, v in per_fold.items()}, "metric": metric,
               "mean_std": stats, "best_fold": best_fold, "best_checkpoint": str(out / "best.pt")}
    atomic.write_json(out / "cv.json", summary)
    atomic.write_text(out / "cv.md", markdown(summary))
    return summary


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"# {summary['base']}: {len(summary['folds'])}-fold cross-validation", "",
             "Validation on the held-out fold, at each fold's best epoch by "
             f"{summary['metric']}. UA = mean per-class recall.", "",
             "| fold | epoch | " + " | ".join(METRICS[k].title for k in KEYS) + " |", "|---|---|" + "---|" * len(KEYS)]
    for k, r in summary["folds"].items():
        mark = " **best**" if int(k) == summary["best_fold"] else ""
        lines.append(f"| {k}{mark} | {r['epoch']} | " + " | ".join(f"{r[x]:.3f}" for x in KEYS) + " |")
    ms = summary["mean_std"]
    lines.append("| mean ± std | | " + " | ".join(f"{ms[x]['mean']:.3f} ± {ms[x]['std']:.3f}" for x in KEYS) + " |")
    recipes = sorted({str(r.get("recipe")) for r in summary["folds"].values()})
    lines += ["", f"Recipe: {', '.join(recipes)}. Best model: fold {summary['best_fold']} → "
                  f"`{summary['best_checkpoint']}`", ""]
    return "\n".join(lines)

