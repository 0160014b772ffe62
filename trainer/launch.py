"""Launch training: torchrun once per run (every fold with ``cv``), then the CV summary.

Refusals a user can fix (a run or feature-cache folder that cannot be written, a bad build
folder or selection, an existing run, nothing to resume) happen here, before any process starts.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from serwild.config import Config, replace
from serwild.errors import Terminated, UsageError
from serwild.processes import atomic, lock, torchrun
from serwild.trainer.cv import summarise
from serwild.trainer.features import INFO_FILE, default_cache_root, resolve_feature_cache
from serwild.trainer.model import fetch_imagenet_weights
from serwild.trainer.preflight import (
    DataPlan,
    RunRef,
    check_run_folder,
    plan_data,
    refuse_existing,
    resolve,
    spec_yaml,
)

MODULE = "serwild.trainer"  # the torchrun target (serwild/trainer/__main__.py)
STOPPED = {128 + signal.SIGTERM: "SIGTERM", 128 + signal.SIGINT: "SIGINT"}  # torchrun.launch's signal exits


@dataclass(frozen=True)
class LaunchOptions:
    nproc: int
    cv: bool = False
    resume: bool = False
    overwrite: bool = False
    max_restarts: int = 0


def rank_args(spec: Path, opts: LaunchOptions) -> list[str]:
    """The ranks' command line: the run's spec file (its resolved config.yaml), and how to start."""
    args = ["--config", str(spec)]
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
    refuse_existing(run_dir, opts.resume, opts.overwrite)


def check_cache_folder(cfg: Config, plan: DataPlan) -> None:
    """Refuse a feature-cache folder the run would need to write but cannot.

    One that already holds a cache (a cache.json in a key folder) may be read-only: a shared,
    prebuilt cache is read as it is, and a rank says so in one line if a file it needs is
    missing there."""
    t = cfg.train
    if plan.build.is_remote or resolve_feature_cache(t.feature_cache, t.freeze or []) is None:
        return
    root = Path(t.feature_cache_dir) if t.feature_cache_dir else default_cache_root(plan.location)
    why = atomic.unwritable(root)
    if why is not None and not any(root.glob(f"*/{INFO_FILE}")):
        setting = "train.feature_cache_dir" if t.feature_cache_dir else "the default feature cache folder"
        raise UsageError(f"{setting} {root} cannot be written ({why}): set train.feature_cache_dir to a writable "
                         f"folder, or train.feature_cache=off")


def train(cfg: Config, opts: LaunchOptions) -> int:
    """Train one run (or every fold with ``opts.cv``); 0 on success, 1 if a run failed; stopped by
    SIGTERM or SIGINT, :class:`~serwild.errors.Terminated` or KeyboardInterrupt is raised (the
    remaining folds are not started).

    Each run's resolved config is written into its folder (config.yaml, :func:`spec_yaml`) and
    the ranks start from that file alone: what they train is exactly what was checked here."""
    check_options(cfg, opts)
    resolved = resolve(cfg)
    check_run_folder(RunRef.of(resolved).dir)
    plan = plan_data(resolved)  # a bad build folder or selection fails here, before torchrun
    check_cache_folder(resolved, plan)
    if cfg.train.pretrained == "imagenet":
        fetch_imagenet_weights(progress=True)  # once, here, rather than in every rank
    runs = [(None, resolved)]
    if opts.cv:
        base = RunRef.of(cfg)
        runs = [(k, resolve(replace(cfg, cv=replace(cfg.cv, fold=k),
                                    train=replace(cfg.train, name=base.fold_run(k).name))))
                for k in plan.manifest.train_folds(cfg.train.dataset)]
    for fold, spec in runs:
        if fold is not None:
            print(f"=== fold {fold} of {[k for k, _ in runs]} ===", file=sys.stderr, flush=True)
        code = _launch_run(spec, plan, opts)
        if code != 0:
            return code
    if opts.cv:
        base = RunRef.of(cfg)
        summary = summarise(base.root, base.name, [k for k, _ in runs if k is not None], cfg.train.best_metric)
        print((base.cv_dir / "cv.md").read_text(), end="")
        print(f"cross-validation summary: {base.cv_dir}/cv.json; best fold {summary['best_fold']}", file=sys.stderr)
    return 0


def _launch_run(spec: Config, plan: DataPlan, opts: LaunchOptions) -> int:
    """One run under torchrun, from its spec file; 0, or the exit status ``train`` returns."""
    run_dir = RunRef.of(spec).dir
    check_run_dir(run_dir, opts)
    # The run folder is ours while torchrun runs: a second `serwild train` on it is refused at
    # once; the ranks work under this lock (serwild.processes.lock.HOLDER_ENV) instead of taking their own.
    with lock.locked(run_dir, "serwild train"):
        atomic.write_text(run_dir / "config.yaml", spec_yaml(spec, plan))
        code = torchrun.launch(torchrun.command(MODULE, rank_args(run_dir / "config.yaml", opts), opts.nproc,
                                                opts.max_restarts), opts.nproc)
    if code in STOPPED:  # SIGTERM (preemption) or Ctrl-C: no more folds; last.pt holds the last epoch.
        # Raised, not returned: the command that launched it (train, reproduce, demo) says so in
        # its one line and exits 143 or 130, whoever received the signal.
        raise Terminated() if code == 128 + signal.SIGTERM else KeyboardInterrupt()
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
    return 0


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
