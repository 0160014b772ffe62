"""train.balance: weights (each class's loss weighted by N / (K · n_k) over the training samples)
and sampler (each class's samples dealt n_max / n_k times per epoch, the epoch still exact)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from serwild.data.epochs import Repeats, epoch_pieces
from serwild.data.loaders import make_train_loader, shard_set
from serwild.data.manifest import Manifest
from serwild.data.records import ShardRecord
from serwild.trainer.recipe import balanced_weights
from serwild.trainer.train import main as train_main
from tests.trainer.conftest import tiny_config
from tests.trainer.test_epochs import CLASSES, _records, _truth


def _rec(class_counts: dict[str, int]) -> ShardRecord:
    """A shard record that only counts its classes (what the weights and the sampler read)."""
    return ShardRecord("ahsn/train/x.tar", "ahsn", "train", 0, "clean", sum(class_counts.values()), 0, "0" * 64,
                       class_counts=class_counts)


def test_balanced_weights_are_scikit_learns() -> None:
    records = [_rec({"ang": 30, "hap": 5}), _rec({"ang": 10, "sad": 15}),
               _rec({"neu": 40})]
    classes = ["ang", "hap", "sad", "neu"]
    labels = np.repeat(classes, [40, 5, 15, 40])
    want = compute_class_weight("balanced", classes=np.array(classes), y=labels)
    assert balanced_weights(records, classes) == pytest.approx(want.tolist())
    assert balanced_weights(records, [*classes, "fru"])[-1] == 0.0  # no sample: nothing to weight


def test_a_run_with_balance_weights_trains_and_says_its_weights(tiny_build: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config(tiny_build, tmp_path, **{"train.name": "w", "train.balance": "weights", "train.epochs": 1,
                                                "cv.fold": None})
    train_main(cfg)
    err = capsys.readouterr().err
    assert "balance weights (ang " in err and (tmp_path / "w" / "best.pt").is_file(), err[-2000:]


def _dealt(repeats: Repeats, seed: int, epoch: int) -> list[Counter]:
    """Per shard: (class, j-th sample of that class in the shard) → copies dealt in ``epoch``."""
    out = []
    for s, row in enumerate(repeats.class_counts):
        items = [((k, j), k) for k, n in enumerate(row) for j in range(n)]
        out.append(Counter(repeats.dealt(items, seed, epoch, s)))
    return out


def test_the_sampler_deals_every_class_as_often_as_the_largest() -> None:
    repeats = Repeats.of([_rec({"ang": 30, "hap": 5}), _rec({"ang": 10, "sad": 15}),
                          _rec({"neu": 41})], ["ang", "hap", "sad", "neu"])
    assert repeats.ratios == pytest.approx((41 / 40, 41 / 5, 41 / 15, 1.0))
    assert repeats.epoch_size() == 4 * 41
    extra = []
    for epoch in range(4):
        dealt = _dealt(repeats, seed=9, epoch=epoch)
        assert [sum(c.values()) for c in dealt] == repeats.counts(9, epoch)  # known before reading
        per_class = Counter()
        for c in dealt:
            for (k, _), copies in c.items():
                r = repeats.ratios[k]
                assert math.floor(r) <= copies <= math.ceil(r)  # every sample, ⌊r⌋ or ⌈r⌉ times
                per_class[k] += copies
        assert all(abs(per_class[k] - 41) <= 2 for k in range(4)), per_class  # ±1 per shard of the class
        extra.append({key for key, copies in dealt[0].items() if key[0] == 1 and copies == 9})
    assert len({frozenset(e) for e in extra}) > 1  # the extra copies fall on other samples each epoch


def test_the_sampler_plan_tiles_the_stream_across_ranks() -> None:
    repeats = Repeats.of([_rec({"a": 7}), _rec({"a": 2, "b": 3}), _rec({"b": 1})],
                         ["a", "b"])
    counts = [7, 5, 1]
    per_rank = 5
    seen: Counter = Counter()
    for rank in range(2):
        pieces = epoch_pieces(counts, per_rank, seed=3, epoch=0, rank=rank, world_size=2, repeats=repeats)
        assert sum(p.stop - p.start for p in pieces) == per_rank
        seen.update((p.epoch, p.shard, i) for p in pieces for i in range(p.start, p.stop))
    assert max(seen.values()) == 1  # no position of the dealt stream is taken twice


def _labels_and_pixels(shards, batch: int, steps: int, rank: int, world: int, workers: int, repeats: Repeats,
                       start: int = 0) -> list[tuple[int, int]]:
    out = []
    for images, labels in make_train_loader(shards, CLASSES, batch, steps, seed=7, epoch=1, rank=rank,
                                            world_size=world, num_workers=workers, shuffle_buffer=10,
                                            start_batch=start, as_uint8=True, repeats=repeats):
        out += [(int(y), int(x.sum())) for x, y in zip(images, labels)]
    return out


def test_a_balanced_epoch_is_exact_across_ranks_workers_and_resume(tiny_build: Path, manifest: Manifest) -> None:
    records = [r for r in _records(manifest) if r.condition == "clean"]
    shards, repeats = shard_set(tiny_build, records), Repeats.of(records, CLASSES)
    truth = _truth(shards)
    per_class = Counter(label for label, _ in truth.elements())
    assert len(set(per_class.values())) > 1, per_class  # the view is imbalanced: the test means something
    batch, world = 3, 2
    steps = -(-repeats.epoch_size() // (batch * world))
    got: list[tuple[int, int]] = []
    for rank in range(world):
        mine = _labels_and_pixels(shards, batch, steps, rank, world, 2, repeats)
        assert len(mine) == batch * steps
        got += mine
    assert not truth - Counter(got)  # every sample, at least once
    dealt = Counter(label for label, _ in got)
    most = max(per_class.values())
    fill = batch * world * steps - repeats.epoch_size()
    for k in per_class:  # every class as often as the largest (±1 per shard, + the fill)
        assert most - len(records) <= dealt[k] <= most + len(records) + fill, (dealt, per_class)
    whole = _labels_and_pixels(shards, batch, steps, 0, world, 0, repeats)
    assert whole == got[:batch * steps]  # the same order with 0 or 2 workers
    assert _labels_and_pixels(shards, batch, steps, 0, world, 2, repeats, start=4) == whole[3 * 4:]


def test_a_run_with_the_balance_sampler_trains_and_says_its_repeats(tiny_build: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config(tiny_build, tmp_path, **{"train.name": "s", "train.balance": "sampler", "train.epochs": 1,
                                                "cv.fold": None})
    train_main(cfg)
    err = capsys.readouterr().err
    assert "balance sampler: each sample dealt (ang " in err and (tmp_path / "s" / "best.pt").is_file(), err[-2000:]
