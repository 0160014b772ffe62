"""Before the first step: resolve the config, select and verify shards, prepare the run folder.

Each check that only one rank performs (verifying sha256s, downloading weights, looking at
the run folder) goes through :func:`agree`, so its verdict reaches every rank: all ranks
fail together with the same message, and none is left waiting in a collective.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from serwild.config import Config, build_identity, config_differences, config_from_resolved, replace, to_dict
from serwild.data.build import Build, open_build
from serwild.data.epochs import Repeats
from serwild.data.loaders import ShardSet
from serwild.data.manifest import Manifest
from serwild.data.records import ShardRecord
from serwild.errors import UsageError
from serwild.processes import atomic, lock
from serwild.processes.checkpoint import peek_checkpoint
from serwild.processes.distributed import Dist, all_gather_object
from serwild.trainer.recipe import resolve_recipe, state_buffers

T = TypeVar("T")
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "curves.png", "config.yaml")


@dataclass(frozen=True)
class DataPlan:
    """What a run reads: the build (a folder or a URL), its classes, training and validation shards."""

    build: Build
    classes: list[str]
    train: ShardSet
    val: ShardSet | None
    samples_per_epoch: int
    train_records: list[ShardRecord]
    val_records: list[ShardRecord]
    repeats: Repeats | None = None  # train.balance: sampler (each class dealt as often as the largest)

    @property
    def location(self) -> str:
        """The build as given (``train.shards`` or ``out``); a URL stays a URL."""
        return self.build.location

    @property
    def manifest(self) -> Manifest:
        return self.build.manifest


@dataclass(frozen=True)
class RunRef:
    """One run's name and folder, the only place they are spelled: ``<train.run_dir>/<name>``,
    where the name is ``train.name`` as given, or ``<dataset>-<conditions>`` with ``-fold<k>``
    for a cross-validation fold; the folds of a ``--cv`` run are ``<base>-fold<k>`` and their
    summary ``<base>-cv``."""

    root: Path
    base: str
    fold: int | None = None

    @classmethod
    def of(cls, cfg: Config) -> RunRef:
        t = cfg.train
        if t.name:
            return cls(Path(t.run_dir), t.name)
        return cls(Path(t.run_dir), f"{t.dataset}-{'+'.join(t.conditions)}", cfg.cv.fold)

    @property
    def name(self) -> str:
        return self.base if self.fold is None else f"{self.base}-fold{self.fold}"

    @property
    def dir(self) -> Path:
        return self.root / self.name

    def fold_run(self, fold: int) -> RunRef:
        """Fold ``fold`` of this run's cross-validation (its name is this run's plus ``-fold<k>``)."""
        return RunRef(self.root, self.name, fold)

    @property
    def cv_dir(self) -> Path:
        """Where ``--cv`` summarises the folds (cv.json, cv.md, the best fold's best.pt)."""
        return self.root / f"{self.name}-cv"


def resolve(cfg: Config) -> Config:
    """Fill in what the config leaves to defaults: the build folder, run name and recipe."""
    train = resolve_recipe(cfg.train)
    train = replace(train, shards=train.shards or cfg.out, name=RunRef.of(cfg).name)
    cv = replace(cfg.cv, val_conditions=cfg.cv.val_conditions or list(train.conditions))
    return replace(cfg, train=train, cv=cv)


def plan_data(cfg: Config) -> DataPlan:
    """Manifest → training (and validation) shards for ``cfg`` (resolved)."""
    t = cfg.train
    reader = open_build(t.shards or cfg.out, cfg.remote.options())  # a folder, file://, http(s)://, s3://
    build, manifest = reader.location, reader.manifest
    if t.dataset not in manifest.datasets:
        raise UsageError(f"train.dataset {t.dataset!r} is not in {build} (built: {', '.join(manifest.datasets)})")
    classes = manifest.classes(t.dataset)
    folds = manifest.train_folds(t.dataset)
    fold = cfg.cv.fold
    if fold is not None and fold not in folds:
        raise UsageError(f"cv.fold={fold} but {build} has training folds {folds}")
    kept = [f for f in folds if f != fold]
    train_records = manifest.select(t.dataset, "train", t.conditions, kept)
    # Validation: the held-out CV fold where one is asked for, else the build's validation part
    # (split.validation_fraction; none in a build made without one, or before the key existed).
    val_conditions = list(cfg.cv.val_conditions or t.conditions)
    val_records = (manifest.select(t.dataset, "train", val_conditions, [fold]) if fold is not None
                   else manifest.select(t.dataset, "validation", val_conditions))
    if not train_records or sum(r.count for r in train_records) == 0:
        raise UsageError(f"no training samples in {build} for dataset {t.dataset}, conditions "
                         f"{list(t.conditions)}, folds {kept}")
    repeats = balanced_repeats(train_records, classes, build) if t.balance == "sampler" else None
    if isinstance(t.samples_per_epoch, int):
        samples = t.samples_per_epoch
    else:  # every (clean) sample once, or under the balanced sampler every class as often as the largest
        counted = (train_records if t.samples_per_epoch == "all"
                   else manifest.select(t.dataset, "train", ["clean"], kept))
        samples = (Repeats.of(counted, classes).epoch_size() if repeats is not None
                   else sum(r.count for r in counted))
    return DataPlan(reader, classes, reader.shard_set(train_records),
                    reader.shard_set(val_records) if val_records else None, max(1, samples),
                    train_records, val_records, repeats)


def balanced_repeats(records: list[ShardRecord], classes: list[str], build: str) -> Repeats:
    """The balanced sampler's repeats of the training shards; refused for a manifest whose shard
    records do not count their classes (the sampler would deal blind)."""
    if any(r.class_counts is None for r in records):
        raise UsageError(f"train.balance=sampler needs each shard's class_counts, which {build}'s manifest lacks: "
                         f"rebuild it, or use train.balance=weights")
    return Repeats.of(records, classes)


def spec_yaml(cfg: Config, plan: DataPlan) -> str:
    """A run's spec, the config.yaml in its folder: the resolved config as the run uses it, with the
    build's own settings (corpus, audio, split, … from its manifest, not this config's defaults),
    headed by the build's location and fingerprint. ``serwild train`` writes it before the ranks
    start, and the ranks start from it; rank 0 writes the same text again before epoch 1 (for runs
    started by torchrun directly)."""
    data = to_dict(cfg)
    data.update(build_identity(plan.manifest.config) or {})
    head = f"# trained on the build {plan.location} (manifest fingerprint {plan.manifest.fingerprint})\n"
    return head + yaml.safe_dump(data, sort_keys=False)


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
    checks. Returns a note on what was not checked (None: everything the level asks)."""
    if level == "none":
        return None
    records = plan.train_records + plan.val_records
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


def check_run_folder(run_dir: Path) -> None:
    """Refuse, in one line, a run folder that cannot be written (before anything else is done)."""
    atomic.require_writable(run_dir, "the run folder", "set train.run_dir to a writable folder")


def run_state(run_dir: Path, spec: Config | None = None, fingerprint: str | None = None) -> tuple[str, str]:
    """``(state, why)``: what ``run_dir`` holds, the one answer the launcher, the ranks and
    ``reproduce`` act on.

    - ``empty``: no run files (a config.yaml alone, which ``serwild train`` writes before its
      ranks start, does not count);
    - ``started``: run files but no last.pt: a run killed before its first epoch ended;
    - ``partial``: last.pt with fewer than ``train.epochs`` epochs (or no ``spec`` to tell);
    - ``done``: last.pt with every epoch, and best.pt;
    - ``other``: only with ``spec``: a run of another resolved config, or (with ``fingerprint``)
      trained on another build, or files that cannot be read; ``why`` says which.
    """
    files = [f for f in RUN_FILES if (run_dir / f).exists()]
    if not [f for f in files if f != "config.yaml"] and spec is None:
        return "empty", ""
    if spec is not None and files:
        why = _other_spec(run_dir, spec)
        if why:
            return "other", why
    if not (run_dir / "last.pt").is_file():
        return ("empty", "") if files in ([], ["config.yaml"]) else ("started", ", ".join(files))
    info = peek_checkpoint(run_dir / "last.pt")
    if spec is None:
        return "partial", ""
    if info is None:
        return "other", "last.pt is not readable"
    if fingerprint is not None and info.manifest_fingerprint != fingerprint:
        return "other", f"trained on another build (fingerprint {str(info.manifest_fingerprint)[:12]})"
    done = info.epoch >= spec.train.epochs and (run_dir / "best.pt").is_file()
    return ("done" if done else "partial"), ""


def _other_spec(run_dir: Path, spec: Config) -> str:
    """Why the run in ``run_dir`` is not the run ``spec`` would train ("" when it is): the
    resolved configs compared by equality, without the evaluator's section (it changes no weights)."""
    try:
        written = yaml.safe_load((run_dir / "config.yaml").read_text())
        old = to_dict(config_from_resolved(written))
    except (OSError, yaml.YAMLError, UsageError, TypeError):
        return "no readable config.yaml"
    old.pop("eval")
    new = to_dict(resolve(spec))
    new.pop("eval")
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))
    return "" if old == new else config_differences(old, new)


def refuse_existing(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Starting afresh (neither ``resume`` nor ``overwrite``) on a folder that holds a run is refused."""
    if run_state(run_dir)[0] != "empty" and not (resume or overwrite):
        held = ", ".join(f for f in RUN_FILES if (run_dir / f).exists())
        raise UsageError(f"{run_dir} already holds a run ({held}): pass --resume to continue it, --overwrite "
                         f"to start again, or set train.name=<another name>")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to resume from (None: start fresh), after checking what is there.

    Rank 0 only. It refuses a folder that cannot be written (one line, not an OSError from
    deep inside), then locks the run folder (:mod:`serwild.processes.lock`; held until ``train.main``
    ends, or the process does): under ``serwild train`` the launcher already holds that lock and
    this is a no-op; ranks started by torchrun directly take it here, so a second run on the
    same folder is refused either way. Then temp files of writers that were killed mid-save
    (``.last.pt.tmp-<pid>``, the size of a checkpoint) are removed. config.yaml is never removed
    here: the ranks of ``serwild train`` start from it, and rank 0 rewrites it before epoch 1.
    """
    check_run_folder(run_dir)
    lock.acquire(run_dir, "serwild.trainer")
    atomic.remove_stale_temps(run_dir)
    last = run_dir / "last.pt"
    if resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        return last if last.is_file() else None
    refuse_existing(run_dir, resume, overwrite)
    for f in RUN_FILES:
        if f != "config.yaml":
            (run_dir / f).unlink(missing_ok=True)
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
