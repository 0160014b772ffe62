"""Launch training: torchrun once per run (every fold with ``cv``), then the CV summary.

Refusals a user can fix (a run or feature-cache folder that cannot be written, a bad build
folder or selection, an existing run, nothing to resume) happen here, before any process starts.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from serwild import lock, torchrun
from serwild.config import Config
from serwild.data.manifest import train_folds
from serwild.errors import UsageError
from serwild.trainer.cv import summarise
from serwild.trainer.features import INFO_FILE, default_cache_root, resolve_feature_cache
from serwild.trainer.model import fetch_imagenet_weights
from serwild.trainer.preflight import DataPlan, check_run_folder, plan_data, resolve, run_name, unwritable

MODULE = "serwild.trainer"  # the torchrun target (serwild/trainer/__main__.py)
STOPPED = {128 + signal.SIGTERM: "SIGTERM", 128 + signal.SIGINT: "SIGINT"}  # torchrun.launch's signal exits


@dataclass(frozen=True)
class LaunchOptions:
    config: str | None  # the YAML path, passed on to every rank
    overrides: list[str]
    nproc: int
    cv: bool = False
    resume: bool = False
    overwrite: bool = False
    max_restarts: int = 0


def rank_args(opts: LaunchOptions, extra: list[str]) -> list[str]:
    """The ranks' command line: the same config and overrides, plus ``extra`` (fold, name)."""
    args = (["--config", opts.config] if opts.config else []) + list(opts.overrides) + extra
    # A restarted worker must pick up last.pt, so restarts imply --resume (a fresh start when none).
    if opts.resume or opts.max_restarts > 0:
        args.append("--resume")
    if opts.overwrite:
        args.append("--overwrite")
    return args


def check_options(cfg: Config, opts: LaunchOptions) -> None:
    if opts.nproc < 1:
        raise UsageError("--nproc must be at least 1")
    if opts.cv and cfg.cv.fold is not None:
        raise UsageError("--cv trains every fold: drop cv.fold from the config or the overrides")
    if opts.resume and opts.overwrite:
        raise UsageError("--resume and --overwrite contradict each other")


def check_run_dir(run_dir: Path, opts: LaunchOptions) -> None:
    if opts.resume and not (run_dir / "last.pt").is_file() and not opts.cv:
        raise UsageError(f"--resume: {run_dir}/last.pt does not exist (nothing to continue)")
    if not (opts.resume or opts.overwrite) and (run_dir / "last.pt").is_file():
        raise UsageError(f"{run_dir} already holds a run: pass --resume to continue it, --overwrite "
                         f"to start again, or set train.name=<another name>")


def check_cache_folder(cfg: Config, plan: DataPlan) -> None:
    """Refuse a feature-cache folder the run would need to write but cannot.

    One that already holds a cache (a cache.json in a key folder) may be read-only: a shared,
    prebuilt cache is read as it is, and a rank says so in one line if a file it needs is
    missing there."""
    t = cfg.train
    if plan.build.is_remote or resolve_feature_cache(t.feature_cache, t.freeze or []) is None:
        return
    root = Path(t.feature_cache_dir) if t.feature_cache_dir else default_cache_root(plan.location)
    why = unwritable(root)
    if why is not None and not any(root.glob(f"*/{INFO_FILE}")):
        setting = "train.feature_cache_dir" if t.feature_cache_dir else "the default feature cache folder"
        raise UsageError(f"{setting} {root} cannot be written ({why}): set train.feature_cache_dir to a writable "
                         f"folder, or train.feature_cache=off")


def train(cfg: Config, opts: LaunchOptions) -> int:
    """Train one run (or every fold with ``opts.cv``); 0 on success, 1 if a run failed, 128 + the
    signal when stopped by SIGTERM or SIGINT (the remaining folds are not started)."""
    check_options(cfg, opts)
    resolved = resolve(cfg)
    check_run_folder(Path(cfg.train.run_dir) / str(resolved.train.name))
    plan = plan_data(resolved)  # a bad build folder or selection fails here, before torchrun
    check_cache_folder(resolved, plan)
    if cfg.train.pretrained == "imagenet":
        fetch_imagenet_weights(progress=True)  # once, here, rather than in every rank
    folds: list[int | None] = list(train_folds(plan.manifest, cfg.train.dataset)) if opts.cv else [cfg.cv.fold]
    base = run_name(cfg, None)
    for fold in folds:
        extra: list[str] = []
        if opts.cv:
            extra = [f"cv.fold={fold}", f"train.name={base}-fold{fold}"]
            print(f"=== fold {fold} of {folds} ===", file=sys.stderr, flush=True)
        run_dir = Path(cfg.train.run_dir) / (f"{base}-fold{fold}" if opts.cv else run_name(cfg, cfg.cv.fold))
        check_run_dir(run_dir, opts)
        # The run folder is ours while torchrun runs: a second `serwild train` on it is refused at
        # once; the ranks work under this lock (serwild.lock.HOLDER_ENV) instead of taking their own.
        with lock.locked(run_dir, "serwild train"):
            code = torchrun.launch(torchrun.command(MODULE, rank_args(opts, extra), opts.nproc, opts.max_restarts),
                                   opts.nproc)
        if code in STOPPED:  # SIGTERM (preemption) or Ctrl-C: no more folds; last.pt holds the last epoch
            print(f"serwild train: stopped by {STOPPED[code]}; continue with --resume", file=sys.stderr)
            return code
        if code in (torchrun.USAGE_EXIT, torchrun.SAID_EXIT):  # a rank said what is wrong in one line
            return 2 if code == torchrun.USAGE_EXIT else 1
        if code > 128:  # torchrun's agent itself was killed (torchrun.launch's convention)
            again = ("run again with --resume to continue" if (run_dir / "last.pt").is_file()
                     else "no epoch was saved: run again with --overwrite")
            print(f"serwild train: torchrun was killed by {signal_name(code - 128)} (its ranks stopped with it); "
                  f"{again}", file=sys.stderr)
            return 1
        if code != 0:
            print(f"serwild train: training failed (exit status {code}); see the messages above", file=sys.stderr)
            return 1
    if opts.cv:
        summary = summarise(cfg.train.run_dir, base, [f for f in folds if f is not None], cfg.train.best_metric)
        out = Path(cfg.train.run_dir) / f"{base}-cv"
        print((out / "cv.md").read_text(), end="")
        print(f"cross-validation summary: {out}/cv.json; best fold {summary['best_fold']}", file=sys.stderr)
    return 0


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
