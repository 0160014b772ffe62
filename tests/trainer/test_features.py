"""The frozen-feature cache: exact first step, keyed to build + weights, resumable, disjoint
across ranks, and a data source of the trainer's one evaluation loop. Two ranks building one
cache (each its share) and training from it under torchrun are the trainer's own runs in
tests/cluster/test_multinode_train.py (two nodes, one folder) and tests/trainer/test_resume_exact.py
(cached-2-ranks).

The model is the tiny AlexNet-shaped model (``train.arch=tiny``: AlexNet's layers, cut points
and module paths at small widths; nothing here depends on AlexNet's size) loaded with
``build_model(4, pretrained=<file>, arch="tiny")`` from ``weights_file`` (conftest: a seeded
random 1000-class model), paper recipe (conv1–conv4 frozen); both paths see the same samples
and the same dropout masks. Tolerances:

- the head on the exact (fp32) features: loss and every trained gradient equal the uncached
  model's to rtol 1e-5 (measured: bit-identical on this CPU).
- the fp16 cache: loss to rtol 1e-4; per layer ‖Δgrad‖ / ‖grad‖ ≤ 3e-2 (the same features
  rounded to bf16 are asserted worse: why the cache stores fp16). The features are within one
  fp16 rounding (2⁻¹¹ relative); gradients move more because a small nudge flips a few ReLU
  gates and max-pool winners downstream, each moving one sample's whole contribution, far
  below the step-to-step noise of SGD on a minibatch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from serwild.builder.labels import PRESETS
from serwild.data.epochs import Repeats
from serwild.data.loaders import epoch_loader, make_eval_loader, make_train_loader, shard_set
from serwild.data.manifest import Manifest
from serwild.data.records import ShardRecord
from serwild.errors import UsageError
from serwild.trainer.config import TrainConfig
from serwild.trainer.features import (
    CachedTrainData,
    FeatureData,
    cache_key,
    cache_records,
    cache_spec,
    frozen_prefix_length,
    head_from,
    load_feature_cache,
    resolve_feature_cache,
    shard_cache_file,
    tar_keys,
    weights_digest,
)
from serwild.trainer.features_write import build_feature_cache
from serwild.trainer.model import build_model
from serwild.trainer.outputs import model_outputs
from serwild.trainer.recipe import make_optimizer, resolve_recipe

CLASSES = PRESETS["ahsn"]  # the view the test builds label by, in class-index order

CPU = torch.device("cpu")
NUM_CLASSES = len(CLASSES)
ARCH = "tiny"


def _paper_model(weights: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer, TrainConfig]:
    train = resolve_recipe(TrainConfig(pretrained=str(weights), recipe="paper", arch=ARCH))
    torch.manual_seed(0)  # the fresh fc8
    model = build_model(NUM_CLASSES, pretrained=str(weights), arch=ARCH)
    return model, make_optimizer(model, train), train


@pytest.fixture(scope="module")
def records(manifest: Manifest) -> list[ShardRecord]:
    """4 training shards, 2 conditions × 2 folds (~40 images): enough, and quick to cache."""
    recs = cache_records(manifest, "ahsn")
    chosen = [r for r in recs if r.fold in (0, 1) and r.path.endswith("-000000.tar")]
    assert {r.condition for r in chosen} == {"clean", "snr15"} and len(chosen) == 4
    return chosen


@pytest.fixture(scope="module")
def paper(weights_file: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer, TrainConfig]:
    return _paper_model(weights_file)


# ----------------------------------------------------------------------------- (d) where the cut is


def test_frozen_prefix_length_truth_table() -> None:
    assert frozen_prefix_length([]) is None
    assert frozen_prefix_length(["conv1"]) == 2  # conv1 (features.0) + its ReLU
    assert frozen_prefix_length(["conv1", "conv2"]) == 5
    assert frozen_prefix_length(["conv1", "conv2", "conv3"]) == 8
    assert frozen_prefix_length(["conv1", "conv2", "conv3", "conv4"]) == 10  # the paper
    assert frozen_prefix_length(["conv4", "conv3", "conv2", "conv1"]) == 10  # order does not matter
    assert frozen_prefix_length(["conv1", "conv2", "conv3", "conv4", "conv5"]) == 12
    assert frozen_prefix_length(["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]) == 12  # fc never
    assert frozen_prefix_length(["conv2", "conv3", "conv4"]) is None  # conv1 trained: nothing exact
    assert frozen_prefix_length(["conv1", "conv3", "conv4"]) == 2  # only the contiguous run counts
    assert frozen_prefix_length(["fc6", "fc7"]) is None
    with pytest.raises(ValueError, match="unknown layer"):
        frozen_prefix_length(["conv9"])
    # Every cut lands right after a ReLU of AlexNet's features.
    with torch.device("meta"):  # the layers without initialising 61M weights
        features = build_model(NUM_CLASSES).features
    for n in (2, 5, 8, 10, 12):
        assert isinstance(features[n - 1], torch.nn.ReLU) and isinstance(features[n - 2], torch.nn.Conv2d)


def test_cache_on_where_exact_off_where_not() -> None:
    paper = ["conv1", "conv2", "conv3", "conv4"]
    assert resolve_feature_cache("auto", paper) == 10
    assert resolve_feature_cache("on", paper) == 10
    assert resolve_feature_cache("off", paper) is None
    assert resolve_feature_cache("auto", []) is None  # scratch recipe: conv1 trains
    with pytest.raises(UsageError, match="conv1 is trained"):
        resolve_feature_cache("on", ["conv2"])
    with pytest.raises(UsageError, match="auto | on | off"):
        resolve_feature_cache("yes", paper)


# ----------------------------------------------------------------------------- (a) exactness


def _step(fn: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module
          ) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of one training step (no optimiser step), the dropout masks fixed."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1234)  # the classifier's dropout draws the same masks on both paths
    loss = F.cross_entropy(fn(x).float(), y)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _keys_of(data: CachedTrainData, feats: torch.Tensor) -> list[str]:
    """The sample keys of a cached batch's rows (a row's bytes name its sample)."""
    rows = {row.numpy().tobytes(): k for row, k in zip(torch.cat(data.feats), data.keys)}
    assert len(rows) == len(data)  # no two samples share their features
    return [rows[row.numpy().tobytes()] for row in feats]


def test_cached_first_step_equals_the_uncached_model(tiny_build: Path, manifest: Manifest, records: list[ShardRecord],
                                                      paper: tuple, tmp_path: Path) -> None:
    model, _, train = paper
    prefix = resolve_feature_cache("auto", train.freeze)
    assert prefix == 10
    shards = records[:2]  # fold 0, clean and snr15
    # The uncached path's images, by sample key, decoded as training decodes them.
    images, labels = {}, {}
    for url in [str(tiny_build / r.path) for r in shards]:
        keys = tar_keys(url)
        batch = next(iter(make_eval_loader([url], 64, 0, classes=CLASSES)))
        images.update(zip(keys, batch[0]))
        labels.update(zip(keys, batch[1].tolist()))
    spec = cache_spec(tmp_path / "cache", manifest.fingerprint, model, prefix)
    stats = build_feature_cache(tiny_build, shards, model, CPU, spec, CLASSES, batch_size=16)
    assert stats.written == 2 and stats.samples == sum(r.count for r in shards)
    data = load_feature_cache(spec, shards)
    assert len(data) == stats.samples and data.feats[0].dtype == torch.float16
    assert data.feats[0].shape[1:] == model.features[:prefix](torch.zeros(1, 3, 256, 256)).shape[1:]
    # The first training batch the cached path serves, and the same samples uncached.
    feats, y = next(iter(epoch_loader(data, 12, 3, seed=0, epoch=0)))  # the first of an epoch of 3 batches
    keys = _keys_of(data, feats)
    assert y.tolist() == [labels[k] for k in keys]
    x = torch.stack([images[k] for k in keys])
    with torch.no_grad():
        exact = model.features[:prefix](x)
    assert ((feats.float() - exact).abs() <= 2.0**-11 * exact.abs() + 1e-7).all()  # rounded to fp16 once
    loss0, grads0 = _step(model, x, y, model)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    errors = {}
    for name, f in {"exact": exact, "fp16": feats, "bf16": exact.to(torch.bfloat16)}.items():
        loss1, grads1 = _step(head_from(model, prefix), f, y, model)
        assert set(grads0) == set(grads1) == trained and not any(n.startswith("features.8.") for n in grads0)
        if name == "exact":  # the head computes what the whole model computes after the cut
            assert loss1 == pytest.approx(loss0, rel=1e-5)
            for n in grads0:  # (bit-identical here; assert_close is the stated tolerance)
                if not torch.equal(grads1[n], grads0[n]):
                    torch.testing.assert_close(grads1[n], grads0[n], rtol=1e-5, atol=1e-7)
        errors[name] = (abs(loss1 - loss0) / loss0,
                        max(((grads1[n] - grads0[n]).norm() / grads0[n].norm()).item() for n in grads0))
    loss_err, grad_err = errors["fp16"]
    assert loss_err < 1e-4 and grad_err < 3e-2, errors
    assert errors["fp16"][1] < errors["bf16"][1], errors  # why the cache stores fp16, not bf16


def test_validation_from_the_cache_runs_the_same_loop(tiny_build: Path, manifest: Manifest, records: list[ShardRecord],
                                                      paper: tuple, tmp_path: Path) -> None:
    """The cache is a data source: its validation batches go through the one evaluation loop
    into the head, and come out as the streamed shards through the whole model do (the same
    samples in the same order; outputs within fp16's rounding of the features)."""
    model, _, train = paper
    prefix = resolve_feature_cache("auto", train.freeze)
    spec = cache_spec(tmp_path / "cache", manifest.fingerprint, model, prefix)
    build_feature_cache(tiny_build, records, model, CPU, spec, CLASSES)
    val = records[2:]
    data = FeatureData(prefix, load_feature_cache(spec, records[:2]), load_feature_cache(spec, val), steps=2, seed=0,
                       batch=5, rank=0, world_size=1)
    cached = model_outputs(data.net(model), data.val_batches(), CPU)
    loader = make_eval_loader([str(tiny_build / r.path) for r in val], 5, 0,
                              counts=[r.count for r in val], classes=CLASSES)
    streamed = model_outputs(model, loader, CPU)
    assert cached.keys == [k for r in val for k in tar_keys(tiny_build / r.path)]
    assert len(cached.keys) == len(streamed.keys) == sum(r.count for r in val)
    assert np.array_equal(cached.labels, streamed.labels)
    np.testing.assert_allclose(cached.logits, streamed.logits, rtol=1e-2, atol=1e-3)
    shares = [FeatureData(prefix, data.train, data.val, 2, 0, 5, rank, 2).val_batches() for rank in (0, 1)]
    assert sorted(k for share in shares for *_, keys in share for k in keys) == sorted(cached.keys)  # once each


def test_head_shares_the_models_parameters(weights_file: Path) -> None:
    model, optimizer, _ = _paper_model(weights_file)
    head = head_from(model, 10)
    model_params = {id(p) for p in model.parameters()}
    assert all(id(p) in model_params for p in head.parameters())
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in head.parameters() if p.requires_grad} == trained
    assert trained == {id(p) for g in optimizer.param_groups for p in g["params"]}
    # A step through the head moves the full model's state_dict (what checkpoints save).
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer.zero_grad()
    feats = model.features[:10](torch.rand(2, 3, 256, 256)).detach().half()  # what the cache would hold
    F.cross_entropy(head(feats), torch.tensor([0, 1])).backward()
    optimizer.step()
    after = model.state_dict()
    assert not torch.equal(after["classifier.6.weight"], before["classifier.6.weight"])
    assert torch.equal(after["features.8.weight"], before["features.8.weight"])
    with torch.device("meta"), pytest.raises(ValueError, match="trained parameters"):
        head_from(build_model(NUM_CLASSES, arch=ARCH), 10)  # nothing frozen: not exact


# ----------------------------------------------------------------------------- (b) keyed


def test_key_follows_build_weights_cut_and_dtype(manifest: Manifest, paper: tuple, tiny_build: Path,
                                                  records: list[ShardRecord], tmp_path: Path) -> None:
    model, _, _ = paper
    fp = manifest.fingerprint
    digest = weights_digest(model, 10)
    key = cache_key(fp, digest, 10)
    assert key == cache_spec(tmp_path, fp, model, 10).key and key.startswith("p10-fp16-")
    assert key != cache_key("0" * 64, digest, 10)  # another build
    assert key != cache_key(fp, digest, 8)  # another cut
    other = copy.deepcopy(model)
    with torch.no_grad():  # weights after the cut (trained every step) do not change the key
        other.classifier[6].weight.add_(1.0)
        other.features[10].weight.add_(1.0)
    assert weights_digest(other, 10) == digest
    with torch.no_grad():  # any weight before the cut does
        other.features[8].bias[0] += 1e-6
    assert weights_digest(other, 10) != digest
    assert cache_key(fp, weights_digest(other, 10), 10) != key
    # Files of one key are refused by another, and a model that does not match its spec is refused.
    spec = cache_spec(tmp_path, fp, model, 10)
    build_feature_cache(tiny_build, records[:1], model, CPU, spec, CLASSES)
    with pytest.raises(UsageError, match="another cache"):
        CachedTrainData([shard_cache_file(spec.dir, records[0])], cache_spec(tmp_path, fp, other, 10).key, records[:1])
    with pytest.raises(ValueError, match="not the weights"):
        build_feature_cache(tiny_build, records[:1], other, CPU, spec, CLASSES)
    info = json.loads((spec.dir / "cache.json").read_text())
    assert info["build_fingerprint"] == fp and info["weights_sha256"] == digest and info["prefix"] == 10


# ----------------------------------------------------------------------------- (c) resume, ranks, sampling


def test_rerun_skips_finished_files_and_redoes_only_missing(tiny_build: Path, manifest: Manifest, paper: tuple,
                                                              records: list[ShardRecord], tmp_path: Path) -> None:
    model, _, _ = paper
    spec = cache_spec(tmp_path, manifest.fingerprint, model, 10)
    # Two ranks of a world of 2 (run one after the other): disjoint shares, together all shards.
    shares = [build_feature_cache(tiny_build, records, model, CPU, spec, CLASSES, rank=r, world_size=2)
              for r in (0, 1)]
    assert [s.written for s in shares] == [2, 2] and sum(s.samples for s in shares) == sum(r.count for r in records)
    files = [shard_cache_file(spec.dir, r) for r in records]
    assert all(f.is_file() for f in files) and sorted(spec.dir.glob("*.pt")) == sorted(files)
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    again = build_feature_cache(tiny_build, records, model, CPU, spec, CLASSES)
    assert (again.written, again.skipped, again.samples) == (0, 4, 0)
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes
    # A rank killed mid-write leaves only a temp file: the shard is redone, the rest untouched.
    files[2].unlink()
    (spec.dir / f".{files[2].name}.tmp-99999").write_bytes(b"half a file")
    redo = build_feature_cache(tiny_build, records, model, CPU, spec, CLASSES)
    assert (redo.written, redo.skipped, redo.samples) == (1, 3, records[2].count)
    assert all(f.stat().st_mtime_ns == mtimes[f] for f in files if f != files[2])
    data = load_feature_cache(spec, records)
    assert data.keys == [k for r in records for k in tar_keys(tiny_build / r.path)]
    # Loading checks the files against the manifest's counts.
    wrong = [dataclasses.replace(records[0], count=records[0].count + 1)]
    with pytest.raises(UsageError, match="the manifest says"):
        load_feature_cache(spec, wrong)
    with pytest.raises(UsageError, match="missing"):
        load_feature_cache(spec, [dataclasses.replace(records[0], path="ahsn/train/fold9/clean-000000.tar")])


@pytest.mark.parametrize("balanced", [False, True])
def test_a_cached_epoch_is_the_streamed_epoch(tiny_build: Path, manifest: Manifest, paper: tuple,
                                             records: list[ShardRecord], tmp_path: Path, balanced: bool) -> None:
    """One definition of an epoch: the cache serves the very samples, in the very order and
    batches, that the streaming loader gives the same run (seed, epoch, rank, world size, shuffle
    buffer, the balanced sampler's repeats), each rank's share and an epoch longer than the data included."""
    model, _, _ = paper
    spec = cache_spec(tmp_path, manifest.fingerprint, model, 10)
    build_feature_cache(tiny_build, records, model, CPU, spec, CLASSES)
    data = load_feature_cache(spec, records)
    shards = shard_set(tiny_build, records)
    repeats = Repeats.of(records, CLASSES) if balanced else None
    n = repeats.epoch_size() if repeats else len(data)
    for rank, world, steps in ((0, 1, n // 4), (1, 2, n // 8), (0, 1, n // 2 + 3)):  # the last: more than one pass
        streamed = list(make_train_loader(shards, CLASSES, 4, steps, seed=5, epoch=2, rank=rank, world_size=world,
                                          shuffle_buffer=7, repeats=repeats))
        cached = list(epoch_loader(data, 4, steps, seed=5, epoch=2, rank=rank, world_size=world, shuffle_buffer=7,
                                   repeats=repeats))
        assert len(cached) == len(streamed) == steps
        for (feats, y_cached), (images, y_streamed) in zip(cached, streamed):
            assert y_cached.tolist() == y_streamed.tolist(), (rank, world, steps)
            with torch.no_grad():
                exact = model.features[:10](images)  # the same images: their features, up to fp16 rounding
            assert ((feats.float() - exact).abs() <= 2.0**-11 * exact.abs() + 1e-6).all(), (rank, world, steps)


def test_cached_batches_exact_count_deterministic_and_disjoint_across_ranks(
        tiny_build: Path, manifest: Manifest, paper: tuple, records: list[ShardRecord], tmp_path: Path) -> None:
    model, _, _ = paper
    spec = cache_spec(tmp_path, manifest.fingerprint, model, 10)
    build_feature_cache(tiny_build, records, model, CPU, spec, CLASSES)
    data = load_feature_cache(spec, records)
    n = len(data)
    batches = list(epoch_loader(data, 3, 5, seed=0, epoch=0, rank=0, world_size=2))
    assert len(batches) == 5 and all(x.shape == (3, *data.feats[0].shape[1:]) and len(y) == 3 for x, y in batches)
    again = list(epoch_loader(data, 3, 5, seed=0, epoch=0, rank=0, world_size=2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    copied = load_feature_cache(spec, records, device="cpu")  # held in memory (what a GPU run would do)
    same = list(epoch_loader(copied, 3, 5, seed=0, epoch=0, rank=0, world_size=2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, same))

    def order(samples: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[str]:
        return [k for x, _ in epoch_loader(data, 1, samples, seed=0, epoch=epoch, rank=rank, world_size=world_size)
                for k in _keys_of(data, x)]

    half = n // 2
    r0, r1 = order(half, 0, 0, 2), order(half, 0, 1, 2)
    assert not set(r0) & set(r1) and len(set(r0)) == half  # one pass: every sample at most once
    assert order(half, 1) != order(half, 0)
    assert set(Counter(order(3 * n, 0)).values()) == {3}  # more than one pass: each sample 3 times
    seen = [k for _, _, keys in data.eval_batches(7, rank=0, world_size=2) for k in keys]
    seen += [k for _, _, keys in data.eval_batches(7, rank=1, world_size=2) for k in keys]
    assert sorted(seen) == sorted(data.keys)


def test_the_trainer_trains_the_paper_recipe_from_the_cache(tiny_build: Path, weights_file: Path,
                                                            tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """`train.feature_cache=auto` on the paper recipe: the first run computes the cache, the next
    one (another experiment of the same build) reuses every file; checkpoints hold the whole
    model, which evaluates like any other; validation reads the fold from the cache and scores
    every sample once, as the streamed shards do."""
    from serwild.processes.checkpoint import load_checkpoint
    from serwild.trainer.train import main as train_main
    from tests.trainer.conftest import tiny_config

    common = {"train.recipe": "paper", "train.pretrained": str(weights_file), "train.epochs": 1,
              "train.feature_cache_dir": str(tmp_path / "cache"), "cv.fold": 0}
    train_main(tiny_config(tiny_build, tmp_path, **common, **{"train.name": "one"}))
    first = capfd.readouterr().err
    assert re.search(r"feature cache .*: [1-9]\d* shard\(s\) computed, 0 reused", first), first
    train_main(tiny_config(tiny_build, tmp_path, **common, **{"train.name": "two",
                                                              "train.conditions": "[clean, snr15]"}))
    second = capfd.readouterr().err
    assert re.search(r"feature cache .*: 0 shard\(s\) computed, [1-9]\d* reused", second), second
    ckpt = load_checkpoint(tmp_path / "two" / "last.pt")
    assert "features.0.weight" in ckpt.model and ckpt.recipe["frozen"] == ["conv1", "conv2", "conv3", "conv4"]
    train_main(tiny_config(tiny_build, tmp_path, **common, **{"train.name": "nocache", "train.feature_cache": "off"}))
    assert "feature cache" not in capfd.readouterr().err
    cached, streamed = (json.loads((tmp_path / n / "metrics.jsonl").read_text())["val"] for n in ("one", "nocache"))
    assert cached["n"] == streamed["n"] == sum(map(sum, streamed["confusion"])) > 0
    assert set(cached) == set(streamed) == {"n", "wa", "ua", "weighted_f1", "macro_f1", "recall", "confusion", "loss"}
