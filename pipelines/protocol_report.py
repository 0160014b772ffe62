"""The protocol's report (``report.md``): the paper's Tables 5/6 per dataset and experiment,
the cross-validation table, the stages' wall times, and the confusion figures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from serwild.config import Config, to_dict
from serwild.data.manifest import Manifest
from serwild.evaluate import health, provenance, report
from serwild.evaluate.compare import compare_runs, difference_caption, figure_caption, markdown_table, notes
from serwild.pipelines.protocol import EXPERIMENTS, Experiment, Progress
from serwild.processes import atomic
from serwild.trainer.cv import KEYS as CV_KEYS

# The paper's Tables 5/6 columns: accuracy and weighted P/R/F1 (per 1 s block).
TABLE_COLUMNS = [("WA", "wa"), ("W-P", "weighted.precision"), ("W-R", "weighted.recall"), ("W-F1", "weighted.f1")]
FIGURES = {"ahsn": 4, "aesn": 5}  # the paper's figure numbers



def table(exps: Sequence[Experiment], results: Mapping[str, Mapping[str, Any]], unit: str = "block") -> str:
    """The paper's Table 5/6 for one dataset: rows = test conditions, columns = experiment 1's
    metrics then experiment 2's, each ``value [low, high]``."""
    head = ["Test condition"] + [f"Exp {e.number} {t}" for e in exps for t, _ in TABLE_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = results[exps[0].base]["metrics"].conditions
    for c in report.order_conditions(first):
        cells = [report.condition_label(c, first[c]["snr_db"])]
        for e in exps:
            m = results[e.base]["metrics"].conditions[c][unit]
            cells += [report.cell(m, key) for _, key in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cv_table(exps: Sequence[Experiment], results: Mapping[str, Mapping[str, Any]]) -> str:
    head = ["Experiment", "folds", "best fold", "accuracy (WA)", "UA", "weighted F1", "macro F1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in exps:
        s = results[e.base]["cv"]
        ms = s["mean_std"]
        lines.append(f"| {e.number} ({EXPERIMENTS[e.number]}) | {len(s['folds'])} | {s['best_fold']} | "
                     + " | ".join(f"{ms[k]['mean']:.3f} ± {ms[k]['std']:.3f}" for k in CV_KEYS) + " |")
    return "\n".join(lines)


def stages_table(progress: Progress) -> str:
    lines = ["| Stage | wall time | this invocation |", "|---|---|---|"]
    for key, s in progress.stages.items():
        if key not in progress.current:
            continue
        secs = s.get("seconds")
        lines.append(f"| {s['label']} | {'—' if secs is None else f'{secs:.1f} s'} | "
                     f"{'reused' if s.get('reused') else 'ran'} |")
    return "\n".join(lines)


def write_protocol_report(out: Path, cfg: Config, config: str | None, overrides: Sequence[str],
                          manifest: Manifest, exps: Sequence[Experiment],
                          results: Mapping[str, Mapping[str, Any]], progress: Progress, t_all: float) -> None:
    """report.md (+ reproduce.json, and a compare folder per dataset) in ``out``."""
    split = manifest.config.get("split") or {}
    cmd = " ".join(["serwild reproduce"] + (["--config", config] if config else []) + list(overrides))
    flags = {f"{e.dataset} exp{e.number}": health.flag_lines(f"{e.dataset.upper()} exp{e.number}",
                                                              results[e.base]["metrics"]) for e in exps}
    smoke = provenance.smoke_note(to_dict(cfg))
    warnings = [f"> {line}" for lines in flags.values() for line in lines] + ([f"> {smoke}"] if smoke else [])
    versions = provenance.versions()
    parts = ["# The paper's protocol, reproduced", "", *warnings, *([""] if warnings else []),
             f"`{cmd}`", "",
             f"Build `{cfg.out}` (manifest fingerprint `{manifest.fingerprint[:12]}`), split "
             f"`{split.get('strategy')}`, {split.get('folds')}-fold cross-validation on the training part; "
             "experiment 1 trains on clean blocks, experiment 2 on clean + every noisy condition (as many "
             "samples per epoch as experiment 1); each experiment's best fold (by validation "
             f"{cfg.train.best_metric}) is tested on every test condition, as in the paper.", "",
             f"**Software:** {provenance.versions_line(versions)}.", ""]
    data: dict[str, Any] = {"command": cmd, "build": str(cfg.out), "fingerprint": manifest.fingerprint,
                            "versions": versions, "smoke": bool(smoke), "flags": flags, "datasets": {}}
    note = ""
    for ds in cfg.datasets:
        dexps = [e for e in exps if e.dataset == ds]
        note = note or report.interval_note(results[dexps[0].base]["metrics"])
        section, data["datasets"][ds] = dataset_section(out, ds, dexps, results, cfg)
        parts += section
    if note:
        parts += [note, ""]
    parts += ["## Wall time", "", stages_table(progress), "",
              f"Total for this invocation: {time.time() - t_all:.1f} s (a reused stage shows the time it took "
              "when it ran).", ""]
    data["stages"] = {k: v for k, v in progress.stages.items() if k in progress.current}
    atomic.write_json(out / "reproduce.json", data)
    atomic.write_text(out / "report.md", "\n".join(parts))


def dataset_section(out: Path, ds: str, dexps: Sequence[Experiment], results: Mapping[str, Mapping[str, Any]],
                    cfg: Config) -> tuple[list[str], dict[str, Any]]:
    """One dataset's part of report.md (tables, Figures 4/5 with captions, budget, CV, flags)
    and of reproduce.json."""
    first = results[dexps[0].base]["metrics"]
    parts = [f"## {ds.upper()}", "", "Tables 5 (experiment 1) and 6 (experiment 2), per 1 s block (WA = accuracy; "
             "W- = weighted average over the classes):", "", table(dexps, results), "",
             report.test_set_line(first), ""]
    arms = {f"exp1 ({EXPERIMENTS[1]})": [results[dexps[0].base]["model_dir"]],
            f"exp2 ({EXPERIMENTS[2]})": [results[dexps[1].base]["model_dir"]]}
    compared = compare_runs(out=out / f"compare-{ds}", arms=arms, bootstrap=cfg.eval.bootstrap,
                            seed=cfg.eval.bootstrap_seed, alpha=cfg.eval.alpha)
    cmp_dir, comp = compared.out, compared.table
    fig = FIGURES.get(ds, "")
    parts += [f"Figure {fig}: weighted F1 per test condition, experiment 2 − experiment 1 with its paired "
              "interval:", "", markdown_table(comp), "", *notes(comp), "",
              f"![Figure {fig} ({ds.upper()}): experiment 2 − experiment 1](compare-{ds}/difference.png)", "",
              difference_caption(comp, f"Figure {fig} ({ds.upper()})"), "",
              f"![both experiments per test condition ({ds.upper()})](compare-{ds}/compare.png)", "",
              figure_caption(comp, {ds}, f"Both experiments ({ds.upper()})"), "",
              *confusion_figures(out, ds, dexps, results),
              "Training budget (each experiment's best fold):", "",
              *[f"- Exp {e.number}: {provenance.budget_line(results[e.base]['metrics'].budget)}."
                for e in dexps],
              "", "Cross-validation (validation fold, each fold's best epoch), mean ± std over the folds:", "",
              cv_table(dexps, results), ""]
    for e in dexps:
        parts.append(f"- Exp {e.number}: {report.protocol_line(results[e.base]['metrics'])} "
                     f"Numbers from `{results[e.base]['metrics_path']}`.")
    parts.append("")
    data = {f"exp{e.number}": {"run": results[e.base]["model_dir"], "metrics": results[e.base]["metrics_path"],
                               "best_fold": results[e.base]["cv"]["best_fold"],
                               "cv_mean_std": results[e.base]["cv"]["mean_std"],
                               "budget": results[e.base]["metrics"].budget,
                               "n": {c: v["block"]["n"] for c, v in results[e.base]["metrics"].conditions.items()},
                               "flags": health.model_flags(results[e.base]["metrics"])} for e in dexps}
    data["compare"] = str(cmp_dir / "compare.json")
    return parts, data


def confusion_figures(out: Path, ds: str, dexps: Sequence[Experiment],
                      results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Each experiment's confusion figure (in its report folder), linked relative to ``out``."""
    parts = []
    for e in dexps:
        figure = Path(results[e.base]["metrics_path"]).parent / "confusion.png"
        if figure.is_file():
            rel = os.path.relpath(figure, out)
            parts += [f"![{ds.upper()} exp{e.number} confusion matrices]({rel})", "",
                      f"*{ds.upper()} experiment {e.number} ({EXPERIMENTS[e.number]}), its best fold's model: "
                      "confusion matrices per test condition, per 1 s block; colour and upper number = share of the "
                      "true class (rows sum to 1, recall on the diagonal), lower number = blocks.*", ""]
    return parts
