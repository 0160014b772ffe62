"""Before the first step: resolve the config, select and verify shards, prepare the run folder.

Each check that only one rank performs (verifying sha256s, downloading weights, looking at
the run folder) goes through :func:`agree`, so its verdict reaches every rank: all ranks
fail together with the same message, and none is left waiting in a collective.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from serwild import atomic, lock
from serwild.config import Config, replace
from serwild.data.build import BuildReader, open_build
from serwild.data.loaders import ShardSet
from serwild.data.manifest import select_shards, train_folds
from serwild.errors import UsageError
from serwild.trainer.distributed import Dist, all_gather_object
from serwild.trainer.recipe import resolve_recipe, state_buffers

T = TypeVar("T")
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "curves.png", "config.yaml")


@dataclass(frozen=True)
class DataPlan:
    """What a run reads: the build (a folder or a URL), its classes, training and validation shards."""

    build: BuildReader
    manifest: dict[str, Any]
    classes: list[str]
    train: ShardSet
    val: ShardSet | None
    samples_per_epoch: int
    train_records: list[dict]
    val_records: list[dict]

    @property
    def location(self) -> str:
        """The build as given (``train.shards`` or ``out``); a URL stays a URL."""
        return self.build.location


def run_name(cfg: Config, fold: int | None) -> str:
    """``train.name``, or ``<dataset>-<conditions>[-fold<k>]``: the run folder's name."""
    base = cfg.train.name or f"{cfg.train.dataset}-{'+'.join(cfg.train.conditions)}"
    return base if fold is None or cfg.train.name else f"{base}-fold{fold}"


def resolve(cfg: Config) -> Config:
    """Fill in what the config leaves to defaults: the build folder, run name and recipe."""
    train = resolve_recipe(cfg.train)
    train = replace(train, shards=train.shards or cfg.out, name=run_name(cfg, cfg.cv.fold))
    cv = replace(cfg.cv, val_conditions=cfg.cv.val_conditions or list(train.conditions))
    return replace(cfg, train=train, cv=cv)


def plan_data(cfg: Config) -> DataPlan:
    """Manifest → training (and validation) shards for ``cfg`` (resolved)."""
    t = cfg.train
    reader = open_build(t.shards or cfg.out, cfg.remote.options())  # a folder, file://, http(s)://, pipe:
    build, manifest = reader.location, reader.manifest
    if t.dataset not in manifest["datasets"]:
        raise UsageError(f"train.dataset {t.dataset!r} is not in {build} (built: {', '.join(manifest['datasets'])})")
    classes = list(manifest["datasets"][t.dataset]["classes"])
    folds = train_folds(manifest, t.dataset)
    fold = cfg.cv.fold
    if fold is not None and fold not in folds:
        raise UsageError(f"cv.fold={fold} but {build} has training folds {folds}")
    kept = [f for f in folds if f != fold]
    train_records = select_shards(manifest, t.dataset, "train", list(t.conditions), kept)
    val_records = (select_shards(manifest, t.dataset, "train", list(cfg.cv.val_conditions or t.conditions),
                                 [fold]) if fold is not None else [])
    if not train_records or sum(r["count"] for r in train_records) == 0:
        raise UsageError(f"no training samples in {build} for dataset {t.dataset}, conditions "
                         f"{list(t.conditions)}, folds {kept}")
    if isinstance(t.samples_per_epoch, int):
        samples = t.samples_per_epoch
    elif t.samples_per_epoch == "clean":
        samples = sum(r["count"] for r in select_shards(manifest, t.dataset, "train", ["clean"], kept))
    else:
        samples = sum(r["count"] for r in train_records)
    return DataPlan(reader, manifest, classes, reader.shard_set(train_records),
                    reader.shard_set(val_records) if val_records else None, max(1, samples),
                    train_records, val_records)


def agree(d: Dist, fn: Callable[[], T], on: bool) -> list[T | None]:
    """Run ``fn`` on the ranks where ``on``; a UsageError anywhere is raised on every rank.

    Returns every rank's result (None where ``fn`` did not run), rank order.
    """
    result: Any = None
    error: str | None = None
    if on:
        try:
            result = fn()
        except UsageError as e:
            error = str(e)
    gathered = all_gather_object((error, result), d)
    errors = [e for e, _ in gathered if e]
    if errors:
        raise UsageError(errors[0])
    return [r for _, r in gathered]


def verify_shards(plan: DataPlan, level: str) -> str | None:
    """The run's shards against the manifest, before the first step (``train.verify``).

    A folder: ``full`` = size, sha256 and sample count of every shard; ``size`` = sizes.
    A remote build is not downloaded twice: ``full`` and ``size`` both ask every shard's
    size (HTTP HEAD) here, and the loaders check each shard's sample count as they stream
    it (a short shard stops the run, naming it); sha256s only ``serwild verify <url>``
    checks. A ``pipe:`` build cannot tell sizes without reading: nothing is checked here.
    Returns a note on what was not checked (None: everything the level asks)."""
    if level == "none":
        return None
    records = plan.train_records + plan.val_records
    if plan.build.source.kind == "pipe":
        return (f"note: {plan.location} is a pipe: build: shard sizes and sha256s are not checked before "
                "training (sample counts are, while streaming); run `serwild verify` on it to check them")
    full = level == "full" and not plan.build.is_remote
    problems = plan.build.check(records, full=full)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        where = plan.build.source.join("manifest.json")
        raise UsageError(f"{len(problems)} shard(s) do not match {where}: "
                         f"{'; '.join(problems[:3])}{more}. Rebuild them (`serwild build` resumes) "
                         f"or pass train.verify=none at your own risk")
    if level == "full" and plan.build.is_remote:
        return (f"note: {plan.location} is remote: shard sizes checked (HEAD); sample counts are checked while "
                "streaming, sha256s are not (that would download the build twice; `serwild verify` does it)")
    return None


def unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot be written, or None when it can.

    A folder not there yet is judged by the nearest one above it that is (where it would be
    made). The kernel is asked (access(2)), so nothing is written, and a read-only mount says
    so even to root, whom file modes do not stop."""
    there = Path(folder).absolute()
    while not there.exists() and there != there.parent:
        there = there.parent
    if not there.is_dir():
        return f"{there} is not a folder"
    if os.access(there, os.W_OK | os.X_OK):
        return None
    if os.statvfs(there).f_flag & os.ST_RDONLY:
        return f"read-only file system at {there}"
    return f"permission denied on {there}"


def check_run_folder(run_dir: Path) -> None:
    """Refuse, in one line, a run folder that cannot be written (before anything else is done)."""
    why = unwritable(run_dir)
    if why is not None:
        raise UsageError(f"the run folder {run_dir} cannot be written ({why}): set train.run_dir to a writable folder")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to resume from (None: start fresh), after checking what is there.

    Rank 0 only. It refuses a folder that cannot be written (one line, not an OSError from
    deep inside), then locks the run folder (:mod:`serwild.lock`; held until ``train.main``
    ends, or the process does): under ``serwild train`` the launcher already holds that lock and
    this is a no-op; ranks started by torchrun directly take it here, so a second run on the
    same folder is refused either way. Then temp files of writers that were killed mid-save
    (``.last.pt.tmp-<pid>``, the size of a checkpoint) are removed.
    """
    check_run_folder(run_dir)
    lock.acquire(run_dir, "serwild.trainer")
    atomic.remove_stale_temps(run_dir)
    last = run_dir / "last.pt"
    if resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        return last if last.is_file() else None
    existing = [f for f in RUN_FILES if (run_dir / f).exists()]
    if existing and not overwrite:
        raise UsageError(f"{run_dir} already holds a run ({', '.join(existing)}): pass --resume to "
                         f"continue it, --overwrite to start again, or set train.name=<another name>")
    for f in existing:
        (run_dir / f).unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return None


def disk_note(run_dir: Path, model: Any, optimizer: Any) -> str | None:
    """A warning when ``run_dir``'s file system looks too small for this run's checkpoints.

    A checkpoint holds the weights plus the optimiser's state for the weights it trains (Adam
    keeps two moments, SGD one momentum buffer). While last.pt is saved, best.pt (an earlier
    epoch's), the old last.pt and the new one's temp file can all exist at once: three
    checkpoints. An estimate, so a note rather than a refusal.
    """
    def nbytes(params: Any) -> int:
        return sum(p.numel() * p.element_size() for p in params)
    trained = [p for g in optimizer.param_groups for p in g["params"]]
    size = nbytes(model.parameters()) + state_buffers(optimizer) * nbytes(trained)
    free = shutil.disk_usage(run_dir).free
    if free >= 3 * size:
        return None
    return (f"note: {run_dir} has {free / 1e9:.2f} GB free; a checkpoint of this model is about "
            f"{size / 1e9:.2f} GB and saving one needs room for three: the run may stop with a full disk")
