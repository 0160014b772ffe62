"""The streaming input: exact batch counts, exactly-once evaluation, refusing bad shards."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest
import torch

from serwild.builder.labels import PRESETS
from serwild.data.build import Build
from serwild.data.epochs import steps_per_epoch
from serwild.data.loaders import (
    ShardError,
    ShardSet,
    make_eval_loader,
    make_train_loader,
    shard_set,
)
from serwild.data.manifest import Manifest
from serwild.data.records import ShardRecord
from serwild.data.remote import open_location
from serwild.errors import UsageError
from serwild.trainer.preflight import DataPlan, plan_data, resolve, verify_shards
from tests.trainer.conftest import tiny_config

CLASSES = PRESETS["ahsn"]  # the view the test builds label by, in class-index order


def _records(manifest: Manifest, condition: str = "clean", fold: int = 0) -> list[ShardRecord]:
    return [s for s in manifest.shards if s.split == "train" and s.condition == condition
            and s.fold == fold]


def _keys(urls: list[str]) -> list[str]:
    out = []
    for url in urls:
        with tarfile.open(url) as tf:
            out += sorted({m.name.split(".", 1)[0] for m in tf if m.isfile()})
    return out


def test_train_loader_gives_exactly_the_asked_batches(tiny_build: Path, manifest: Manifest) -> None:
    shards = shard_set(tiny_build, _records(manifest)[:1])  # one shard, fewer samples than asked
    for workers in (0, 2):
        batches = list(make_train_loader(shards, CLASSES, batch_size=3, num_batches=7, seed=0, epoch=0,
                                         num_workers=workers, shuffle_buffer=10))
        assert len(batches) == 7
        for images, labels in batches:
            assert images.shape == (3, 3, 256, 256) and images.dtype == torch.float32
            assert torch.isfinite(images).all() and labels.dtype == torch.long
            assert ((labels >= 0) & (labels < 4)).all()


def test_train_loader_is_deterministic_per_epoch(tiny_build: Path, manifest: Manifest) -> None:
    shards = shard_set(tiny_build, _records(manifest))

    def images(epoch: int) -> torch.Tensor:
        return torch.cat([x for x, _ in make_train_loader(shards, CLASSES, 4, 3, seed=5, epoch=epoch,
                                                          shuffle_buffer=16, as_uint8=True)])

    first = images(0)
    assert first.shape == (12, 3, 256, 256) and first.dtype == torch.uint8
    assert torch.equal(first, images(0))  # a resumed epoch sees the same data
    assert not torch.equal(first, images(1))  # and the next epoch other data


@pytest.mark.parametrize("n_shards", [1, 3])
def test_eval_loader_reads_every_sample_once_across_ranks(tiny_build: Path, manifest: Manifest, n_shards: int) -> None:
    records = (_records(manifest, "clean", 0) + _records(manifest, "snr15", 0))[:n_shards]
    shards = shard_set(tiny_build, records)
    seen: list[str] = []
    per_rank = []
    for rank in range(2):
        n = 0
        for images, labels, metas in make_eval_loader(shards.urls, 5, 1, rank=rank, world_size=2,
                                                      counts=shards.counts, classes=CLASSES):
            assert images.shape[1:] == (3, 256, 256) and len(labels) == len(metas) <= 5
            seen += [f"{m['utterance']}_b{m['block']:03d}_{m['condition']}" for m in metas]
            n += len(metas)
        per_rank.append(n)
    assert sorted(seen) == sorted(_keys(shards.urls))  # each sample exactly once
    assert sum(per_rank) == shards.samples
    if n_shards == 1:
        assert per_rank[1] == 0  # the rank without a shard yields nothing (and returns)


def _short_copy(src: Path, dst: Path, keep_samples: int) -> None:
    """A tar cut at a member boundary: it reads as a valid, shorter shard."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        members = [m for m in tin if m.isfile()][: 2 * keep_samples]
        for m in members:
            tout.addfile(m, io.BytesIO(tin.extractfile(m).read()))


def test_short_shard_is_refused_by_both_loaders(tiny_build: Path, manifest: Manifest, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    record = _records(manifest)[0]
    short = tmp_path / "short.tar"
    _short_copy(tiny_build / record.path, short, record.count - 1)
    good = ShardSet([str(short)], [record.count])
    with pytest.raises(ShardError, match="manifest says"):
        list(make_eval_loader(good.urls, 4, 0, counts=good.counts, classes=CLASSES))
    # The worker that raises ends without removing the pymp-* folder multiprocessing made in its
    # temp folder to pass tensors (one was left in /tmp per suite run): it inherits this test's.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(ShardError, match="manifest says"):  # also through a worker process
        list(make_eval_loader(good.urls, 4, 1, counts=good.counts, classes=CLASSES))
    with pytest.raises(ShardError, match="manifest says"):
        list(make_train_loader(good, CLASSES, 2, 3 * record.count, seed=0, epoch=0, shuffle_buffer=2))


def test_corrupt_shard_is_refused(tiny_build: Path, manifest: Manifest, tmp_path: Path) -> None:
    record = _records(manifest)[0]
    bad = tmp_path / "bad.tar"
    data = bytearray((tiny_build / record.path).read_bytes())
    data[5000:9000] = b"\x00" * 4000  # inside the first PNG
    bad.write_bytes(bytes(data))
    with pytest.raises(ShardError):
        list(make_eval_loader([str(bad)], 4, 0, counts=[record.count], classes=CLASSES))


def test_verify_refuses_a_changed_shard_before_training(tiny_build: Path, manifest: Manifest, tmp_path: Path) -> None:
    record = _records(manifest)[0]
    (tmp_path / record.path).parent.mkdir(parents=True)
    _short_copy(tiny_build / record.path, tmp_path / record.path, record.count - 1)
    plan = DataPlan(Build(open_location(tmp_path), manifest), ["ang", "hap", "sad", "neu"],
                    shard_set(tmp_path, [record]), None, record.count, [record], [])
    for level in ("size", "full"):
        with pytest.raises(UsageError, match="do not match"):
            verify_shards(plan, level)
    verify_shards(plan, "none")
    shutil.copy(tiny_build / record.path, tmp_path / record.path)
    verify_shards(plan, "full")


def test_plan_selects_folds_conditions_and_epoch_size(tiny_build: Path, manifest: Manifest, tmp_path: Path) -> None:
    both = "[clean, snr15]"
    plan = plan_data(resolve(tiny_config(tiny_build, tmp_path, **{"train.conditions": both, "cv.fold": 2,
                                                                   "train.samples_per_epoch": "all"})))
    assert {r.fold for r in plan.train_records} == {0, 1, 3, 4}
    assert {r.fold for r in plan.val_records} == {2}
    assert {r.condition for r in plan.val_records} == {"clean", "snr15"}
    assert plan.samples_per_epoch == sum(r.count for r in plan.train_records)
    clean = plan_data(resolve(tiny_config(tiny_build, tmp_path, **{"train.conditions": both, "cv.fold": 2,
                                                                    "train.samples_per_epoch": "clean"})))
    n_clean = sum(r.count for r in plan.train_records if r.condition == "clean")
    assert clean.samples_per_epoch == n_clean < plan.samples_per_epoch
    assert steps_per_epoch(n_clean, 4, 2) == -(-n_clean // 8)
    every = plan_data(resolve(tiny_config(tiny_build, tmp_path, **{"cv.fold": None})))
    # no CV fold: every fold trains, and the build's validation part validates (the run's conditions)
    assert {r.fold for r in every.train_records} == {0, 1, 2, 3, 4}
    assert {(r.split, r.condition) for r in every.val_records} == {("validation", "clean")}
    with pytest.raises(UsageError, match="cv.fold=7"):
        plan_data(resolve(tiny_config(tiny_build, tmp_path, **{"cv.fold": 7})))
    with pytest.raises(UsageError, match="snr20"):
        plan_data(resolve(tiny_config(tiny_build, tmp_path, **{"train.conditions": "[clean, snr20]"})))
    assert json.loads(json.dumps(plan.classes)) == manifest.classes("ahsn")
