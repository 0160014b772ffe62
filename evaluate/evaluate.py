"""Score a checkpoint on every test condition of its build, each condition separately.

Every test sample is scored exactly once across the ranks and the count must equal the manifest's;
outputs that are not finite (NaN, inf) fail the evaluation. The checkpoint must come from this build
(same manifest fingerprint and classes), so a model is never scored on samples it was trained on by
accident. The sha256 check streams each remote test shard once more; ``check_sha256=False`` asks sizes
only (by HEAD), and the counts are still checked while scoring. The report: docs/evaluation.md.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from torch import nn

from serwild import __version__, metrics
from serwild.config import Config, config_from_resolved
from serwild.data.build import Build, open_build
from serwild.data.fetch import RemoteOptions
from serwild.data.loaders import ShardSet, make_eval_loader
from serwild.data.manifest import Manifest
from serwild.data.records import ShardRecord
from serwild.data.remote import Location, open_location
from serwild.errors import UsageError
from serwild.evaluate import health, provenance, report, uncertainty
from serwild.evaluate.config import EvalConfig
from serwild.evaluate.document import Report
from serwild.processes import atomic
from serwild.processes.checkpoint import Checkpoint, OtherBuildError, check_compatible, load_checkpoint
from serwild.processes.distributed import Dist, all_gather_object, setup, teardown
from serwild.progress import progress
from serwild.trainer.model import model_from_checkpoint
from serwild.trainer.outputs import model_outputs

EVAL_TIMEOUT_S = 1800  # collectives wait at most for the slowest rank's share of one condition


@dataclass(frozen=True)
class Target:
    """A checkpoint and the build it is scored on, checked against each other."""

    path: Path
    ckpt: Checkpoint
    cfg: Config  # the training run's resolved config
    build: Build

    @property
    def manifest(self) -> Manifest:
        return self.build.manifest

    @property
    def classes(self) -> list[str]:
        return list(self.ckpt.classes)

    @property
    def build_dir(self) -> str:
        """The build as given (a folder, or a URL kept as text: ``Path`` would mangle ``//``)."""
        return self.build.location


def evaluate_checkpoint(checkpoint: str | Path, shards: str | Path | None = None, out: str | Path | None = None,
                        settings: EvalConfig | None = None, check_sha256: bool = True,
                        allow_other_build: bool = False, remote: RemoteOptions | None = None) -> Path:
    """Evaluate ``checkpoint`` on each test condition; returns the report folder.

    Runs in one process, or in every process of a torchrun job (rank 0 writes the report).
    """
    settings = settings or EvalConfig()
    target = open_target(checkpoint, shards, allow_other_build, remote)
    out_dir = Path(out) if out is not None else target.path.parent / "report"
    have = target.manifest.extra_columns
    if settings.group_by is not None and settings.group_by not in have:
        raise UsageError(f"eval.group_by={settings.group_by}: the build's samples have no such column (its corpus's "
                         f"own columns: {', '.join(have) or 'none'})")
    atomic.require_writable(out_dir, "the report folder", "give --out a writable folder")  # before any scoring
    # Every rank checks every shard before any reads: all ranks fail the same way, together,
    # instead of one rank failing and the others waiting in a collective.
    todo = test_shards(target, check_sha256)
    d = setup(settings.device, timeout_s=EVAL_TIMEOUT_S)
    try:
        model = model_from_checkpoint(target.ckpt).to(d.device).eval()
        conditions, outputs = {}, {}
        for cond, records in todo.items():
            conditions[cond], outputs[cond] = score_condition(model, target, cond, records, settings, d)
        if d.is_main:
            write_outputs(target, conditions, outputs, out_dir, d, check_sha256, settings)
    finally:
        teardown(d)
    return out_dir


def open_target(checkpoint: str | Path, shards: str | Path | None, allow_other_build: bool,
                remote: RemoteOptions | None = None) -> Target:
    path = Path(checkpoint)
    ckpt = load_checkpoint(path, map_location="cpu")
    source = build_source(path, ckpt, shards, remote)
    if not source.is_remote and not Path(source.base).is_dir():
        raise UsageError(f"build folder {source.location} not found" + ("" if shards else " (recorded in the "
                         "checkpoint; pass --shards to point at the build)"))
    build = open_build(source)
    check_build(ckpt, build.manifest, build.location, allow_other_build)
    return Target(path, ckpt, config_from_resolved(ckpt.config, f"checkpoint {path}"), build)


def build_source(path: Path, ckpt: Checkpoint, shards: str | Path | None,
                 remote: RemoteOptions | None) -> Location:
    """Where to read the build: ``shards`` as the user gave it, else the location the checkpoint
    records (a folder or URL: no location runs a command)."""
    if shards is not None:
        return open_location(shards, remote)
    recorded = ckpt.shards
    if not isinstance(recorded, str) or not recorded:
        raise UsageError(f"{path} records no build (shards: {recorded!r}): pass --shards to point at the build")
    return open_location(recorded, remote)  # text: a URL must stay a URL


def check_build(ckpt: Checkpoint, manifest: Manifest, build_dir: str | Path,
                allow_other_build: bool) -> None:
    """The checkpoint's dataset and classes must be this build's; another build (another
    fingerprint) only with ``allow_other_build``, and then with a warning."""
    dataset = ckpt.dataset
    if dataset not in manifest.datasets:
        raise UsageError(f"checkpoint's dataset {dataset!r} is not in {build_dir} "
                         f"(built: {', '.join(manifest.datasets)})")
    hint = "; pass --shards with its own build, or --allow-other-build"
    try:
        check_compatible(ckpt, dataset, manifest.classes(dataset), manifest.fingerprint, "the checkpoint", hint=hint)
    except OtherBuildError as e:
        if not allow_other_build:
            raise
        print(f"serwild evaluate: warning: {str(e).removesuffix(hint)}", file=sys.stderr)


def test_shards(target: Target, check_sha256: bool) -> dict[str, list[ShardRecord]]:
    """condition → its test shard records, each checked against the manifest."""
    todo: dict[str, list[ShardRecord]] = {}
    dataset = target.ckpt.dataset
    for cond in report.order_conditions(target.manifest.conditions):
        records = target.manifest.select(dataset, "test", [cond])
        if not records:
            raise UsageError(f"{target.build_dir}: no test shards for dataset {dataset}, condition {cond}")
        problems = target.build.check(records, full=check_sha256)
        if problems:
            raise UsageError(f"{target.build_dir}: test shards of {cond} do not match the manifest: "
                             + "; ".join(problems))
        todo[cond] = records
    return todo


def score_condition(model: nn.Module, target: Target, cond: str, records: list[ShardRecord],
                    settings: EvalConfig, d: Dist) -> tuple[dict[str, Any], dict[str, Any]]:
    """One condition's metrics and its scored blocks (logits, labels, utterances, blocks, sorted
    by sample), gathered over ranks."""
    shards = target.build.shard_set(records)
    k = len(target.classes)
    local = _guarded(d, functools.partial(score_shards, model, shards, target.classes, settings.batch_size,
                                          settings.num_workers, d, desc=cond))
    merged = merge_parts(all_gather_object(local, d), cond, shards.samples, records)
    logits = merged["logits"]
    bad = int((~np.isfinite(logits).all(axis=1)).sum())
    if bad:  # finite weights can still overflow: a NaN would otherwise pass as a score
        raise UsageError(f"evaluating {cond}: the model's outputs are not finite (NaN or inf) for {bad} of "
                         f"{len(logits)} samples: {target.path} is damaged or its run diverged")
    result = {"snr_db": target.manifest.conditions[cond], "shards": len(records), "samples": shards.samples,
              **metrics.condition_metrics(logits, merged["labels"], merged["utterances"], target.classes)}
    if settings.bootstrap:
        for unit, ci in condition_intervals(logits, merged["labels"], merged["utterances"], k, settings).items():
            result[unit]["ci"] = ci
    if settings.group_by:
        result["groups"] = group_metrics(logits, merged, settings.group_by, target.classes)
    return result, merged


def group_metrics(logits: np.ndarray, merged: dict[str, Any], column: str, classes: list[str]) -> dict[str, Any]:
    """Per value of the corpus's own ``column`` (each sample's ``extra``): the per-block metrics of
    the samples holding it (``{"by", "values": {value: metrics}}``; a sample without it is "")."""
    values = [str((x or {}).get(column, "")) for x in merged["extra"]]
    out: dict[str, Any] = {}
    for value in sorted(set(values)):
        idx = [i for i, v in enumerate(values) if v == value]
        out[value] = metrics.condition_metrics(logits[idx], merged["labels"][idx],
                                               [merged["utterances"][i] for i in idx], classes)["block"]
    return {"by": column, "values": out}


def condition_intervals(logits: np.ndarray, labels: np.ndarray, utterances: list[str], n_classes: int,
                        settings: EvalConfig) -> dict[str, dict[str, dict[str, float]]]:
    """``{unit: {metric: {"low", "high"}}}``: percentile intervals from a cluster bootstrap that
    resamples whole utterances (a block's errors are not independent of its neighbours'), seeded
    by ``eval.bootstrap_seed``, so the same outputs always give the same interval."""
    u_logits, u_labels, u_ids = metrics.utterance_logits(logits, labels, utterances)
    out = {}
    for unit, (y, pred, groups) in {"block": (labels, np.argmax(logits, 1), list(utterances)),
                                    "utterance": (u_labels, np.argmax(u_logits, 1), u_ids)}.items():
        cis = uncertainty.bootstrap_ci(y, pred, groups, n_resamples=settings.bootstrap, seed=settings.bootstrap_seed,
                                       alpha=settings.alpha, n_classes=n_classes)
        out[unit] = {name: {"low": r["low"], "high": r["high"]} for name, r in cis.items()}
    return out


def uncertainty_settings(settings: EvalConfig) -> dict[str, Any] | None:
    """How the ``ci`` entries of metrics.json were computed (None: no intervals)."""
    if not settings.bootstrap:
        return None
    return {"method": "percentile cluster bootstrap over utterances", "level": 1.0 - settings.alpha,
            "n_resamples": settings.bootstrap, "seed": settings.bootstrap_seed, "alpha": settings.alpha}


def write_outputs(target: Target, conditions: dict[str, Any], outputs: dict[str, dict[str, Any]], out_dir: Path,
                  d: Dist, check_sha256: bool, settings: EvalConfig | None = None) -> None:
    result = Report(
        run=target.path.parent.name, checkpoint=str(target.path), shards=target.build_dir,
        manifest_fingerprint=target.manifest.fingerprint, dataset=target.ckpt.dataset, classes=target.classes,
        protocol=protocol(target.ckpt, target.cfg, target.manifest), world_size=d.world_size, device=str(d.device),
        sha256_checked=check_sha256, serwild_version=__version__, versions=provenance.versions(),
        budget=provenance.training_budget(target.ckpt, target.path),
        smoke_note=provenance.smoke_note(target.ckpt.config) or None,
        uncertainty=uncertainty_settings(settings or EvalConfig()), conditions=conditions)
    result = replace(result, flags=health.model_flags(result))
    report.write_report(result, out_dir, outputs)
    atomic.write_text(out_dir / "config.yaml", yaml.safe_dump(target.ckpt.config, sort_keys=False))
    flags = "".join(f"\n{line}" for line in health.flag_lines(result.run, result))
    print(f"\n{report.metrics_table(result, 'block')}\n{flags}\n\nreport: {out_dir / 'report.md'}")


def protocol(ckpt: Checkpoint, cfg: Config, manifest: Manifest) -> dict[str, Any]:
    """What produced these numbers: the build's split and the training run's choices."""
    split = manifest.config.get("split") or {}
    held = ((manifest.split or {}).get("datasets") or {}).get(ckpt.dataset) or {}
    return {
        "dataset": ckpt.dataset, "split_strategy": split.get("strategy", cfg.split.strategy),
        "test_speakers": held.get("test_speakers"),  # a speaker-independent build's held-out speakers
        "train_conditions": list(cfg.train.conditions), "fold": cfg.cv.fold,
        "pretrained": cfg.train.pretrained, "recipe": ckpt.recipe or {}, "epoch": ckpt.epoch,
    }


# ----------------------------------------------------------------------------- scoring


def score_shards(model: nn.Module, shards: ShardSet, classes: Sequence[str], batch_size: int, num_workers: int, d: Dist,
                 desc: str = "") -> dict[str, Any]:
    """This rank's share of ``shards`` (a trainer ShardSet): logits, labels and sample identities."""
    loader = make_eval_loader(shards.urls, batch_size, num_workers, rank=d.rank, world_size=d.world_size,
                              counts=shards.counts, classes=classes, remote=shards.remote,
                              identities=shards.identities)
    total = -(-shards.samples // d.world_size)  # about this rank's share: shards are dealt to ranks
    with progress(total, f"evaluate {desc}", unit="blk", command="evaluate", enabled=d.is_main,
                  leave=False) as bar:
        out = model_outputs(model, loader, d.device, on_batch=bar.update)
    return {"logits": out.logits, "labels": out.labels, "utterances": [m["utterance"] for m in out.keys],
            "blocks": [int(m["block"]) for m in out.keys], "extra": [m.get("extra") or {} for m in out.keys]}


def merge_parts(parts: list[dict], cond: str, expected: int, records: list[ShardRecord]) -> dict[str, Any]:
    """Concatenate the ranks' outputs, sorted by sample; check each sample came exactly once."""
    errors = [p["error"] for p in parts if "error" in p]
    if errors:
        raise UsageError(f"evaluating {cond}: " + "; ".join(dict.fromkeys(errors)))
    parts = [p for p in parts if len(p["labels"])]
    if not parts:
        raise UsageError(f"evaluating {cond}: no samples were read from {len(records)} shard(s)")
    logits = np.concatenate([p["logits"] for p in parts])
    labels = np.concatenate([p["labels"] for p in parts])
    utts = [u for p in parts for u in p["utterances"]]
    blocks = [b for p in parts for b in p["blocks"]]
    extra = [x for p in parts for x in p.get("extra") or [{}] * len(p["utterances"])]
    ids = list(zip(utts, blocks))
    if len(set(ids)) != len(ids):
        raise UsageError(f"evaluating {cond}: {len(ids) - len(set(ids))} sample(s) were scored more than once")
    if len(ids) != expected:
        raise UsageError(f"evaluating {cond}: scored {len(ids)} samples but the manifest lists {expected} "
                         f"in {', '.join(r.path for r in records)}")
    # An utterance's blocks share its label, or no utterance-level score means anything
    # (a shard relabelled in place passes --no-sha256's size check; metrics would raise).
    label_of: dict[str, tuple[int, int]] = {}
    for u, b, y in zip(utts, blocks, labels.tolist()):
        first = label_of.setdefault(u, (int(y), b))
        if first[0] != y:
            raise UsageError(f"evaluating {cond}: utterance {u} has blocks with different labels (block {first[1]}: "
                             f"class {first[0]}, block {b}: class {y}) in {', '.join(r.path for r in records)}: "
                             "the build is damaged (run `serwild verify`)")
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return {"logits": logits[order], "labels": labels[order], "utterances": [utts[i] for i in order],
            "blocks": [blocks[i] for i in order], "extra": [extra[i] for i in order]}


def _guarded(d: Dist, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Under DDP, a rank whose data fails (a bad shard, a read error) must still join the
    gather, or the others would wait for it until the timeout: its failure travels as an
    ``error`` entry instead, re-raised on every rank by merge_parts. Any other exception is
    a bug: it ends this rank, and torchrun then stops the others."""
    if not d.distributed:
        return fn()
    try:
        return fn()
    except (UsageError, OSError) as e:
        return {"error": f"rank {d.rank}: {e}"}
