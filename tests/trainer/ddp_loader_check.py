"""Run by test_ddp.py under ``torchrun --nproc_per_node=2``: the training and evaluation
loaders on few shards (1 for 2 ranks, 3 for 2 ranks, odd sample counts).

    torchrun --standalone --nproc_per_node=2 tests/trainer/ddp_loader_check.py SPEC.json OUT.json

Each training step does an all-reduce, as DDP's gradient sync does: a rank with fewer
batches than the other would leave it waiting there until the 60 s collective timeout.
"""

from __future__ import annotations

import json
import sys

import torch

from serwild.builder.labels import PRESETS
from serwild.data.loaders import ShardSet, make_eval_loader, make_train_loader
from serwild.processes.distributed import all_gather_object, all_reduce_sum, setup, teardown
from serwild.processes.torchrun import exit_now

CLASSES = PRESETS["ahsn"]  # the view the test builds label by, in class-index order


def main(spec_path: str, out_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    d = setup("cpu", timeout_s=60)
    result = {}
    try:
        for name, case in spec["cases"].items():
            shards = ShardSet(case["urls"], case["counts"])
            steps = 0
            for _images, _labels in make_train_loader(shards, CLASSES, 3, spec["batches"], seed=0, epoch=0, rank=d.rank,
                                                      world_size=d.world_size,
                                                      num_workers=1, shuffle_buffer=8):
                all_reduce_sum(torch.ones(1), d)
                steps += 1
            keys = []
            for _, _, metas in make_eval_loader(shards.urls, 4, 1, d.rank, d.world_size, counts=shards.counts,
                                                classes=CLASSES):
                keys += [f"{m['utterance']}_b{m['block']:03d}_{m['condition']}" for m in metas]
            result[name] = {"train_batches": all_gather_object(steps, d), "eval_keys": all_gather_object(keys, d)}
    finally:
        teardown(d)
    if d.is_main:
        with open(out_path, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    exit_now(0)  # as serwild's ranks end (see serwild.processes.torchrun.exit_now)
