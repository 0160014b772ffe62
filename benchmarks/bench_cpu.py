"""What makes a training step faster on a CPU: precision, memory format and threads, side by side.

    .venv/bin/python benchmarks/bench_cpu.py [--arch alexnet resnet18 mobilenet_v3_small] [--steps 12]
                                             [--batch-size 16]

The trainer's own step (the scratch recipe: Adam 1e-4, every layer; the loss in fp32, as
``train_one_epoch`` takes it) on one fixed stream of random 256×256 images and labels, the same
seed for every variant, in one process:

- ``fp32``: the baseline (what ``train.amp: auto`` gives on a CPU), every core's thread;
- ``bf16``: ``train.amp=bf16`` (autocast of the forward pass);
- ``fp32 channels_last`` and ``bf16 channels_last``: the model and batches in NHWC (what
  ``train.channels_last`` does on a GPU);
- ``fp32 1 thread``: half the threads, for how the step scales with cores.

Prints images/s over the steps after the first two (warm-up), the ratio to fp32, and the
largest difference of each loss curve from fp32's, so a speed-up is read with whether the
model still learns the same. bf16 pays only where the CPU has bf16 instructions (AVX512-BF16,
AMX); elsewhere it is slower.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from serwild.trainer.model import build_model
from serwild.trainer.outputs import autocast

VARIANTS = (("fp32", None, False, None), ("bf16", torch.bfloat16, False, None),
            ("fp32 channels_last", None, True, None), ("bf16 channels_last", torch.bfloat16, True, None),
            ("fp32 1 thread", None, False, 1))


def run(arch: str, dtype: torch.dtype | None, channels_last: bool, steps: int, batch: int,
        seed: int = 0) -> tuple[float, list[float]]:
    """(images/s after two warm-up steps, the loss of every step) of one variant."""
    torch.manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(4, "none", arch).train().to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(seed + 1)
    data = [(torch.randn(batch, 3, 256, 256, generator=gen), torch.randint(0, 4, (batch,), generator=gen))
            for _ in range(steps)]
    losses, start = [], 0.0
    for i, (x, y) in enumerate(data):
        if i == 2:
            start = time.perf_counter()
        with autocast(torch.device("cpu"), dtype):
            logits = model(x.contiguous(memory_format=fmt))
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return batch * (steps - 2) / (time.perf_counter() - start), losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=["alexnet", "resnet18", "mobilenet_v3_small"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    threads = torch.get_num_threads()
    print(f"{os.cpu_count()} cores, torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {threads} thread(s) unless named; batch {args.batch_size}, "
          f"{args.steps} steps (2 warm-up)\n")
    print(f"{'network':<20}{'variant':<22}{'images/s':>9}{'vs fp32':>9}{'largest loss diff':>19}")
    for arch in args.arch:
        base: tuple[float, list[float]] | None = None
        for name, dtype, nhwc, n_threads in VARIANTS:
            torch.set_num_threads(n_threads or threads)
            rate, losses = run(arch, dtype, nhwc, args.steps, args.batch_size)
            base = base or (rate, losses)
            diff = max(abs(a - b) for a, b in zip(base[1], losses))
            print(f"{arch:<20}{name:<22}{rate:>9.1f}{rate / base[0]:>8.2f}x{diff:>19.4f}")
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
