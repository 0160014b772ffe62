"""Tiny fixtures for the evaluator: a hand-written build (odd sample counts, a condition
with a single shard) in the published shard format, and a random-init checkpoint of the tiny
model (``train.arch=tiny``: AlexNet's layers at small widths, so it is written and read in
milliseconds; nothing here is about AlexNet's size).

The build is written here rather than by ``serwild build`` so the tests control the exact
counts (odd numbers, fewer shards than ranks) and run in a second; it follows
shards/README.md and uses the builder's own manifest helpers for the fingerprint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from serwild.builder.manifest import counts_table, fingerprint
from serwild.builder.render import encode_png
from serwild.config import load_config, to_dict
from serwild.data.manifest import DatasetInfo, Manifest, sha256_file
from serwild.data.records import ShardRecord
from serwild.processes.atomic import write_json
from serwild.processes.checkpoint import Checkpoint, save_checkpoint
from serwild.trainer.model import build_model

CLASSES = ["ang", "hap", "sad", "neu"]
ARCH = "tiny"
# condition → (snr, samples per test shard): odd totals, and snr15 has one shard for two ranks
TEST_SHARDS: dict[str, tuple[float | None, list[int]]] = {
    "clean": (None, [5, 4]), "snr15": (15.0, [7]), "snr40": (40.0, [3, 3, 1])}


def _sample(i: int, cond: str, snr: float | None, rng: np.random.Generator) -> dict:
    utt, block = f"Ses01F_impro0{i % 2 + 1}_F{i // 3:03d}", i % 3
    cls = (i // 3) % len(CLASSES)  # one label per utterance
    key = f"{utt}_b{block:03d}_{cond}"
    # A smooth random field as the "spectrogram": cheap, and different per sample.
    png = encode_png(np.clip(rng.normal(128, 60, size=(257, 259)), 0, 255).astype(np.uint8), "jet")
    meta = {"label": CLASSES[cls], "class_index": cls, "dataset": "ahsn", "utterance": utt, "speaker": "Ses01F",
            "session": "Ses01", "source": f"Session1/sentences/wav/{utt[:14]}/{utt}.wav", "block": block,
            "start_s": float(block), "condition": cond, "snr_db": snr, "noise": None if snr is None else "hum.wav",
            "noise_offset_s": None if snr is None else 0.5, "noise_gain": None if snr is None else 0.1,
            "split": "test", "fold": None}
    return {"__key__": key, "png": png, "json": json.dumps(meta, sort_keys=True).encode()}


def write_build(root: Path, test_shards: dict = TEST_SHARDS, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    records = []
    for cond, (snr, sizes) in test_shards.items():
        i = 0
        for k, n in enumerate(sizes):
            rel = f"ahsn/test/{cond}-{k:06d}.tar"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            samples = [_sample(i + j, cond, snr, rng) for j in range(n)]
            i += n
            with open(root / rel, "wb") as f:
                w = wds.TarWriter(f, mtime=0.0, encoder=False)
                for s in sorted(samples, key=lambda s: s["__key__"]):
                    w.write(s)
                w.close()
            counts: dict[str, int] = {}
            for s in samples:
                label = json.loads(s["json"])["label"]
                counts[label] = counts.get(label, 0) + 1
            records.append(ShardRecord(rel, "ahsn", "test", None, cond, n, (root / rel).stat().st_size,
                                       sha256_file(root / rel), snr, dict(sorted(counts.items()))))
    datasets = {"ahsn": DatasetInfo(tuple(CLASSES))}
    manifest = Manifest(config=to_dict(load_config(None, ["split.strategy=utterance"])),
                        fingerprint=fingerprint(records, datasets), datasets=datasets,
                        conditions={c: snr for c, (snr, _) in test_shards.items()}, counts=counts_table(records),
                        shards=tuple(records))
    write_json(root / "manifest.json", manifest.to_dict())
    return root


def write_checkpoint(path: Path, build: Path, seed: int = 0) -> Path:
    """A checkpoint as serwild train writes it, around a random-init tiny model."""
    torch.manual_seed(seed)
    model = build_model(len(CLASSES), pretrained="none", arch=ARCH)
    manifest = json.loads((build / "manifest.json").read_text())
    cfg = load_config(None, [f"train.arch={ARCH}", "train.pretrained=none", "train.conditions=[clean, snr15]",
                             "eval.batch_size=8", "eval.num_workers=0", f"out={build}"])
    ckpt = {"model": model.state_dict(), "epoch": 2, "config": to_dict(cfg), "classes": CLASSES,
            "dataset": "ahsn", "manifest_fingerprint": manifest["fingerprint"], "shards": str(build),
            "recipe": {"name": "scratch", "optimizer": "adam", "lr": 1e-4, "frozen": []},
            "metrics": {}, "arch": ARCH, "serwild_version": "0.1.0"}
    save_checkpoint(path, Checkpoint(**ckpt))
    return path


@pytest.fixture(scope="session")
def build_and_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(build dir, checkpoint) shared by the module's tests; tests must not modify them."""
    root = tmp_path_factory.mktemp("evalfix")
    build = write_build(root / "shards")
    return build, write_checkpoint(root / "runs" / "scratch-clean" / "best.pt", build)
