"""Score a checkpoint on every test condition of its build, each condition separately.

    serwild evaluate --checkpoint runs/<name>/best.pt [--shards shards/<build>] [--out DIR]
    serwild evaluate --checkpoint runs/<name>/best.pt --nproc 2       # torchrun, 2 processes
    torchrun --standalone --nproc-per-node 2 -m serwild evaluate --checkpoint …

Each condition's test shards are checked against the manifest (present, size, sha256,
sample count) and then read exactly once, split across the processes; the outputs are
gathered and the number of distinct samples scored must equal the manifest's count, or
the evaluation fails. The checkpoint must come from this build (same manifest fingerprint
and classes), so a model is never scored on samples it was trained on by accident.
Writes the report folder (default ``<run dir>/report/``): see serwild.evaluate.report.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from serwild.errors import UsageError

REPORT_FORMAT = "serwild-report/1"
EVAL_TIMEOUT_S = 1800  # collectives wait at most for the slowest rank's share of one condition


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a checkpoint written by serwild train")
    p.add_argument("--shards", metavar="DIR", help="build folder (default: the one the checkpoint was trained on)")
    p.add_argument("--out", metavar="DIR", help="report folder (default: <checkpoint's folder>/report)")
    p.add_argument("--batch-size", type=int, metavar="N", help="per process (default: the config's eval.batch_size)")
    p.add_argument("--num-workers", type=int, metavar="N",
                   help="loader workers per process (default: eval.num_workers)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: a GPU when there is one (default)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="launch N processes with torchrun (ignored when already under torchrun)")
    p.add_argument("--no-sha256", dest="sha256", action="store_false",
                   help="check shard sizes and counts but do not recompute sha256 (faster on huge builds)")
    p.add_argument("--allow-other-build", action="store_true",
                   help="score on a build other than the checkpoint's (classes must still match); "
                        "beware: its test samples may overlap what the model was trained on")


def run(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        raise UsageError("--nproc must be at least 1")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_torchrun(args)
    evaluate_checkpoint(args.checkpoint, shards=args.shards, out=args.out, batch_size=args.batch_size,
                        num_workers=args.num_workers, device=args.device, check_sha256=args.sha256,
                        allow_other_build=args.allow_other_build)
    return 0


def launch_torchrun(args: argparse.Namespace) -> int:
    """Re-run this command under torchrun with ``args.nproc`` processes on this machine."""
    argv = ["--checkpoint", args.checkpoint, "--device", args.device]
    for flag, value in (("--shards", args.shards), ("--out", args.out), ("--batch-size", args.batch_size),
                        ("--num-workers", args.num_workers)):
        if value is not None:
            argv += [flag, str(value)]
    argv += [] if args.sha256 else ["--no-sha256"]
    argv += ["--allow-other-build"] if args.allow_other_build else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "serwild", "evaluate", *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    return subprocess.call(cmd, env=env)


# ----------------------------------------------------------------------------- library


def evaluate_checkpoint(checkpoint: str | Path, shards: str | Path | None = None, out: str | Path | None = None,
                        batch_size: int | None = None, num_workers: int | None = None, device: str = "auto",
                        check_sha256: bool = True, allow_other_build: bool = False) -> Path:
    """Evaluate ``checkpoint`` on each test condition; returns the report folder.

    Runs in one process, or in every process of a torchrun job (rank 0 writes the report).
    """
    import numpy as np
    import torch

    from serwild.builder.manifest import check_shards, load_manifest, select_shards
    from serwild.config import config_from_resolved
    from serwild.evaluate import metrics, report
    from serwild.trainer.checkpoint import load_checkpoint
    from serwild.trainer.data import shard_set
    from serwild.trainer.distributed import all_gather_object, setup, teardown
    from serwild.trainer.model import model_from_checkpoint

    ckpt_path = Path(checkpoint)
    if not ckpt_path.is_file():
        raise UsageError(f"checkpoint {ckpt_path} not found")
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    cfg = config_from_resolved(ckpt["config"])
    build_dir = Path(shards if shards is not None else ckpt["shards"])
    if not build_dir.is_dir():
        raise UsageError(f"build folder {build_dir} not found" + ("" if shards else " (recorded in the "
                         "checkpoint; pass --shards to point at the build)"))
    manifest = load_manifest(build_dir)
    dataset, classes = ckpt["dataset"], list(ckpt["classes"])
    check_compatible(ckpt, manifest, build_dir, allow_other_build)
    out_dir = Path(out) if out is not None else ckpt_path.parent / "report"
    batch_size = batch_size or cfg.eval.batch_size
    num_workers = cfg.eval.num_workers if num_workers is None else num_workers
    order = report.order_conditions(manifest["conditions"])

    # Every rank checks every shard before any reads: all ranks fail the same way, together,
    # instead of one rank failing and the others waiting in a collective.
    todo: dict[str, list[dict]] = {}
    for cond in order:
        records = select_shards(manifest, dataset, "test", [cond])
        if not records:
            raise UsageError(f"{build_dir}: no test shards for dataset {dataset}, condition {cond}")
        problems = check_shards(build_dir, records, full=check_sha256)
        if problems:
            raise UsageError(f"{build_dir}: test shards of {cond} do not match the manifest: "
                             + "; ".join(problems))
        todo[cond] = records

    d = setup(device, timeout_s=EVAL_TIMEOUT_S)
    try:
        model = model_from_checkpoint(ckpt).to(d.device).eval()
        conditions: dict[str, Any] = {}
        rows: list[dict] = []
        for cond, records in todo.items():
            shard_set_ = shard_set(build_dir, records)
            local = _guarded(d, functools.partial(score_shards, model, shard_set_, len(classes), batch_size,
                                                  num_workers, d, desc=cond))
            merged = merge_parts(all_gather_object(local, d), cond, shard_set_.samples, records)
            logits = merged["logits"]
            conditions[cond] = {
                "snr_db": manifest["conditions"][cond], "shards": len(records), "samples": shard_set_.samples,
                **metrics.condition_metrics(logits, merged["labels"], merged["utterances"], classes)}
            probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
            rows += [{"condition": cond, "utterance": u, "block": int(b), "true": int(t), "pred": int(p),
                      "probs": pr} for u, b, t, p, pr in zip(merged["utterances"], merged["blocks"],
                                                            merged["labels"], np.argmax(logits, 1), probs)]
        if not d.is_main:
            return out_dir
        result = {
            "format": REPORT_FORMAT, "run": ckpt_path.parent.name, "checkpoint": str(ckpt_path),
            "shards": str(build_dir), "manifest_fingerprint": manifest.get("fingerprint"),
            "dataset": dataset, "classes": classes, "protocol": protocol(ckpt, cfg, manifest),
            "world_size": d.world_size, "device": str(d.device), "sha256_checked": check_sha256,
            "serwild_version": _version(), "conditions": conditions,
        }
        report.write_report(result, out_dir, rows)
        (out_dir / "config.yaml").write_text(_yaml(ckpt["config"]))
        print(f"\n{report.metrics_table(result, 'block')}\n\nreport: {out_dir / 'report.md'}")
    finally:
        teardown(d)
    return out_dir


def check_compatible(ckpt: dict, manifest: dict, build_dir: Path, allow_other_build: bool) -> None:
    """Refuse a checkpoint that was not trained on this build, or whose classes differ."""
    dataset = ckpt["dataset"]
    if dataset not in manifest["datasets"]:
        raise UsageError(f"checkpoint's dataset {dataset!r} is not in {build_dir} "
                         f"(built: {', '.join(manifest['datasets'])})")
    built = list(manifest["datasets"][dataset]["classes"])
    if list(ckpt["classes"]) != built:
        raise UsageError(f"checkpoint classes {list(ckpt['classes'])} differ from {build_dir}'s "
                         f"{dataset} classes {built}")
    if ckpt.get("manifest_fingerprint") != manifest.get("fingerprint"):
        msg = (f"checkpoint was trained on a different build than {build_dir} (manifest fingerprint "
               f"{str(ckpt.get('manifest_fingerprint'))[:12]} vs {str(manifest.get('fingerprint'))[:12]})")
        if not allow_other_build:
            raise UsageError(msg + "; pass --shards with its own build, or --allow-other-build")
        print(f"serwild evaluate: warning: {msg}", file=sys.stderr)


def protocol(ckpt: dict, cfg: Any, manifest: dict) -> dict[str, Any]:
    """What produced these numbers: the build's split and the training run's choices."""
    split = (manifest.get("config") or {}).get("split") or {}
    return {
        "dataset": ckpt["dataset"], "split_strategy": split.get("strategy", cfg.split.strategy),
        "train_conditions": list(cfg.train.conditions), "fold": cfg.cv.fold,
        "pretrained": cfg.train.pretrained, "recipe": ckpt.get("recipe") or {}, "epoch": ckpt.get("epoch"),
    }


# ----------------------------------------------------------------------------- scoring


def score_shards(model: Any, shards: Any, num_classes: int, batch_size: int, num_workers: int, d: Any,
                 desc: str = "") -> dict[str, Any]:
    """This rank's share of ``shards`` (a trainer ShardSet): logits, labels and sample identities."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from serwild.trainer.data import make_eval_loader

    loader = make_eval_loader(shards.urls, batch_size, num_workers, rank=d.rank, world_size=d.world_size,
                              counts=shards.counts, num_classes=num_classes)
    logits, labels, utts, blocks = [], [], [], []
    total = -(-shards.samples // d.world_size)  # about this rank's share: shards are dealt to ranks
    with torch.inference_mode(), tqdm(total=total, desc=f"evaluate {desc}", unit="blk",
                                      disable=not d.is_main, leave=False) as bar:
        for images, y, metas in loader:
            logits.append(model(images.to(d.device)).float().cpu().numpy())
            labels.append(y.numpy())
            utts += [m["utterance"] for m in metas]
            blocks += [int(m["block"]) for m in metas]
            bar.update(len(metas))
    return {"logits": np.concatenate(logits) if logits else np.zeros((0, num_classes), np.float32),
            "labels": np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64),
            "utterances": utts, "blocks": blocks}


def merge_parts(parts: list[dict], cond: str, expected: int, records: list[dict]) -> dict[str, Any]:
    """Concatenate the ranks' outputs, sorted by sample; check each sample came exactly once."""
    import numpy as np

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
    ids = list(zip(utts, blocks))
    if len(set(ids)) != len(ids):
        raise UsageError(f"evaluating {cond}: {len(ids) - len(set(ids))} sample(s) were scored more than once")
    if len(ids) != expected:
        raise UsageError(f"evaluating {cond}: scored {len(ids)} samples but the manifest lists {expected} "
                         f"in {', '.join(r['path'] for r in records)}")
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return {"logits": logits[order], "labels": labels[order], "utterances": [utts[i] for i in order],
            "blocks": [blocks[i] for i in order]}


def _guarded(d: Any, fn: Any) -> dict[str, Any]:
    """Under DDP, a rank that fails must still join the gather (or the others would wait
    for it until the timeout): its failure travels as an ``error`` entry instead."""
    if not d.distributed:
        return fn()
    try:
        return fn()
    except Exception as e:  # re-raised on every rank by merge_parts
        return {"error": f"rank {d.rank}: {e}"}


def _version() -> str:
    from serwild import __version__

    return __version__


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False)
