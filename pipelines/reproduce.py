"""``serwild reproduce``: the paper's whole protocol in one command, resumable (docs/evaluation.md).

Build (or reuse) → per dataset and experiment (1: clean blocks; 2: clean + every noisy condition, as
many samples per epoch as experiment 1) train every CV fold, summarise, test the best fold's model on
every test condition → one report folder. Resuming: a fold run is reused when its config.yaml is the
resolved config this invocation would train with and its last.pt holds every epoch on this build (same
manifest fingerprint); a half-trained one resumes from last.pt; an evaluation is reused when its
metrics.json is of this build, this best fold, this config and these interval settings.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from serwild.builder.build import built_identity, run_build
from serwild.config import Config, build_identity, load_config, resolve_config_path
from serwild.data.build import open_build
from serwild.data.manifest import Manifest, load_manifest
from serwild.errors import UsageError
from serwild.evaluate import report
from serwild.evaluate.document import read_report
from serwild.evaluate.evaluate import evaluate_checkpoint, uncertainty_settings
from serwild.pipelines.protocol import PROTOCOL, Experiment, Preset, Progress
from serwild.pipelines.protocol_report import write_protocol_report
from serwild.processes import torchrun
from serwild.trainer.cv import summarise
from serwild.trainer.launch import LaunchOptions, train
from serwild.trainer.preflight import RunRef, run_state


def run_reproduce(config: str | Path | None, overrides: Sequence[str] = (), nproc: int | None = None,
                  report_dir: str | Path | None = None, overwrite: bool = False, executor: str = "ray") -> Path:
    """The whole protocol (see the module's docstring); returns the report folder."""
    t_all = time.time()
    cfg = load_config(_existing(config), overrides)
    out = Path(report_dir) if report_dir is not None else Path(cfg.train.run_dir) / "reproduce"
    exps, results, manifest, progress = run_preset(PROTOCOL, config, overrides, out, nproc, overwrite, executor)
    t0 = progress.start("report", f"report → {out}")
    write_protocol_report(out, cfg, config, list(overrides), manifest, exps, results, progress, t_all)
    progress.finish("report", f"report → {out}", t0, False)
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.md'}", file=sys.stderr)
    flags = json.loads((out / "reproduce.json").read_text())["flags"]
    for line in (line for lines in flags.values() for line in lines):  # last: the report may have scrolled by
        print(f"serwild reproduce: {line}", file=sys.stderr)
    return out


def run_preset(preset: Preset, config: str | Path | None, overrides: Sequence[str], out: Path,
               nproc: int | None = None, overwrite: bool = False, executor: str = "ray",
               ) -> tuple[list[Experiment], dict[str, dict[str, Any]], dict[str, Any], Progress]:
    """Build (or reuse the build), then train and evaluate every experiment of ``preset``; the
    experiments, their results, the manifest and the progress (its wall times in ``out``)."""
    config = _existing(config)
    cfg = load_config(config, overrides)
    out.mkdir(parents=True, exist_ok=True)
    runs_each = cfg.split.folds + 2 if preset.cross_validate else 2  # train (every fold), CV summary, evaluate
    progress = Progress(2 + (len(cfg.datasets) if preset.every_dataset else 1) * 2 * runs_each, out / "stages.json")
    t0 = progress.start("build", f"build {cfg.out}")
    manifest, reused = ensure_build(cfg, overwrite, executor)
    progress.finish("build", f"build {cfg.out}", t0, reused)
    exps = experiments(cfg, manifest, preset)
    progress.total = 2 + sum(len(e.folds) + 2 if e.folds else 2 for e in exps)
    ctx = Context(config, list(overrides), cfg, manifest.fingerprint, nproc or torchrun.default_nproc(),
                  overwrite, progress)
    results = {e.base: run_experiment(e, ctx) for e in exps}
    return exps, results, manifest, progress


def _existing(config: str | Path | None) -> str | None:
    """``--config`` as every command reads it: a path, or the name of an installed config."""
    if config is None:
        return None
    path = resolve_config_path(config)
    if not path.is_file():
        raise UsageError(f"config {config} not found")
    return str(path)


# ----------------------------------------------------------------------------- build


def ensure_build(cfg: Config, overwrite: bool, executor: str) -> tuple[Manifest, bool]:
    """(manifest, reused): a finished build of this config is reused as it is; anything else
    goes to ``run_build`` (which resumes a killed build, and refuses another config's build
    without ``overwrite``)."""
    if (Path(cfg.out) / "manifest.json").is_file() and built_identity(Path(cfg.out)) == build_identity(cfg):
        return load_manifest(cfg.out), True
    run_build(cfg, executor=executor, overwrite=overwrite)
    problems = open_build(cfg.out).verify()
    if problems:
        raise UsageError(f"the fresh build {cfg.out} fails its own verify: {'; '.join(problems[:3])}")
    return load_manifest(cfg.out), False


def experiments(cfg: Config, manifest: Manifest, preset: Preset = PROTOCOL) -> list[Experiment]:
    """Every dataset × experiment of the protocol, on this build (its conditions, whatever ``snr_db`` was)."""
    conds = report.order_conditions(manifest.conditions)
    noisy = [c for c in conds if manifest.conditions[c] is not None]
    if "clean" not in conds or not noisy:
        raise UsageError(f"{cfg.out} has conditions {conds}: the protocol needs clean and at least one noisy "
                         "condition (set snr_db)")
    out = []
    for ds in cfg.datasets if preset.every_dataset else [cfg.train.dataset]:
        if ds not in manifest.datasets:
            raise UsageError(f"dataset {ds} is not in {cfg.out} (built: {', '.join(manifest.datasets)})")
        folds = manifest.train_folds(ds) if preset.cross_validate else []
        if preset.cross_validate and len(folds) < 2:
            raise UsageError(f"{cfg.out}: dataset {ds} has {len(folds)} training fold(s); cross-validation needs 2")
        for number, train_conds in ((1, ["clean"]), (2, ["clean", *noisy])):
            extra = [f"train.dataset={ds}", f"train.conditions=[{', '.join(train_conds)}]"]
            if number == 2 and cfg.train.samples_per_epoch == "all":
                # Equal optimiser steps: experiment 2 draws as many samples per epoch as
                # experiment 1 has, so the two differ in the data, not in the compute.
                extra.append("train.samples_per_epoch=clean")
            out.append(Experiment(ds, number, train_conds, extra, run_ref(cfg, ds, number, preset), folds))
    return out


def run_ref(cfg: Config, dataset: str, number: int, preset: Preset) -> RunRef:
    """``<train.name or "protocol">-<dataset>-exp<n>`` for the protocol, ``<train.name or "demo">-clean``
    and ``-augmented`` for the demo."""
    if preset.every_dataset:
        name = f"{cfg.train.name or 'protocol'}-{dataset}-{preset.names[number]}"
    else:
        name = f"{cfg.train.name or 'demo'}-{preset.names[number]}"
    return RunRef(Path(cfg.train.run_dir), name)


# ----------------------------------------------------------------------------- one experiment


@dataclass(frozen=True)
class Context:
    """What every run of one invocation shares."""

    config: str | None
    overrides: list[str]
    cfg: Config
    fingerprint: str
    nproc: int
    overwrite: bool
    progress: Progress


def run_experiment(e: Experiment, ctx: Context) -> dict[str, Any]:
    """Train (or reuse) the experiment's runs, and evaluate its model; what the report needs."""
    if not e.folds:
        trained = train_run(e, e.run, [], ctx)
        tested, summary = e.run, None
    else:
        trained = any([train_run(e, e.run.fold_run(k), [f"cv.fold={k}"], ctx) for k in e.folds])
        summary = summarise_folds(e, ctx, trained)
        tested = e.run.fold_run(summary["best_fold"])
    model_dir = e.run.cv_dir if e.folds else e.run.dir
    report_dir = model_dir / "report"
    which = f"fold {tested.fold}'s model" if e.folds else "its model"
    label = f"{e.title}: evaluate {which} on every test condition → {report_dir}"
    t0 = ctx.progress.start(f"{e.base}-eval", label)
    reuse = not trained and evaluation_reusable(report_dir, tested.dir, tested.fold, ctx.fingerprint, ctx.cfg)
    if not reuse:
        evaluate_checkpoint(model_dir / "best.pt", shards=ctx.cfg.out, out=report_dir, settings=ctx.cfg.eval)
    ctx.progress.finish(f"{e.base}-eval", label, t0, reuse)
    return {"cv": summary, "model_dir": str(model_dir), "metrics_path": str(report_dir / "metrics.json"),
            "metrics": read_report(report_dir / "metrics.json")}


def train_run(e: Experiment, ref: RunRef, extra: list[str], ctx: Context) -> bool:
    """Train ``ref`` unless its folder holds it finished (resume a half-trained one); whether it trained."""
    more = [*ctx.overrides, *e.overrides, *extra, f"train.name={ref.name}"]
    run_cfg = load_config(ctx.config, more)
    label = f"{e.title}: train {f'fold {ref.fold} ' if ref.fold is not None else ''}→ {ref.dir}"
    t0 = ctx.progress.start(ref.name, label)
    state, why = run_state(ref.dir, run_cfg, ctx.fingerprint)
    if state == "other" and not ctx.overwrite:
        raise UsageError(f"{ref.dir} holds another run ({why}): pass --overwrite to retrain it, or set "
                         f"train.run_dir or train.name to keep both")
    if state != "done":
        opts = LaunchOptions(nproc=ctx.nproc, resume=state == "partial", overwrite=state != "partial")
        if train(run_cfg, opts) != 0:  # a stop by SIGTERM is raised, and the command's line says so
            raise UsageError(f"training {ref.dir} failed (see the messages above); run the same command again "
                             f"to resume")
    ctx.progress.finish(ref.name, label, t0, state == "done")
    return state != "done"


def summarise_folds(e: Experiment, ctx: Context, trained: bool) -> dict[str, Any]:
    """The folds' CV summary (``<name>-cv``), reused when no fold was trained again."""
    cv_dir = e.run.cv_dir
    label = f"{e.title}: CV summary → {cv_dir}"
    t0 = ctx.progress.start(f"{e.base}-cv", label)
    summary = _read_json(cv_dir / "cv.json")
    reuse = (not trained and summary is not None and sorted(map(int, summary.get("folds", {}))) == e.folds
             and (cv_dir / "best.pt").is_file() and (cv_dir / "cv.md").is_file())
    if not reuse:
        summary = summarise(e.run.root, e.base, e.folds, ctx.cfg.train.best_metric)
    ctx.progress.finish(f"{e.base}-cv", label, t0, reuse)
    return summary


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def evaluation_reusable(report_dir: Path, best_run: Path, best_fold: int, fingerprint: str, cfg: Config) -> bool:
    """The report folder holds the evaluation of this best fold's model, on this build, with
    these interval settings, every file written."""
    if not all((report_dir / f).is_file() for f in ("metrics.json", "logits.npz", "report.md", "config.yaml")):
        return False
    try:
        m = read_report(report_dir / "metrics.json")
    except UsageError:
        return False
    return (m.manifest_fingerprint == fingerprint and m.protocol.get("fold") == best_fold
            and m.uncertainty == json.loads(json.dumps(uncertainty_settings(cfg.eval)))
            and _read_yaml(report_dir / "config.yaml") == _read_yaml(best_run / "config.yaml"))


