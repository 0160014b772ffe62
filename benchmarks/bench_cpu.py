"""bf16 autocast against fp32 for a training step on a CPU: images/s and the loss curve.

    .venv/bin/python benchmarks/bench_amp.py [--arch alexnet] [--steps 12] [--batch-size 16] [--threads 2]

The trainer's own step (``train.amp``: ``none`` is fp32, ``bf16`` autocasts the forward pass;
the loss is taken in fp32, as ``train_one_epoch`` does) on a fixed stream of random 256×256
images with random labels, the same seed for both: the scratch recipe (Adam 1e-4, every layer).
Prints images/s over the steps after the first two (warm-up) for each, their ratio, and both
loss curves, so a speed-up is read together with whether the loss still follows fp32's.
bf16 pays only where the CPU has bf16 instructions (AVX512-BF16, AMX); elsewhere it is slower.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from serwild.trainer.model import build_model
from serwild.trainer.outputs import autocast


def run(arch: str, dtype: torch.dtype | None, steps: int, batch: int, seed: int = 0) -> tuple[float, list[float]]:
    torch.manual_seed(seed)
    model = build_model(4, "none", arch).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(seed + 1)
    data = [(torch.randn(batch, 3, 256, 256, generator=gen), torch.randint(0, 4, (batch,), generator=gen))
            for _ in range(steps)]
    losses, start = [], 0.0
    for i, (x, y) in enumerate(data):
        if i == 2:
            start = time.perf_counter()
        with autocast(torch.device("cpu"), dtype):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return batch * (steps - 2) / (time.perf_counter() - start), losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="alexnet")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fp32, l32 = run(args.arch, None, args.steps, args.batch_size)
    bf16, l16 = run(args.arch, torch.bfloat16, args.steps, args.batch_size)
    print(f"{args.arch}, batch {args.batch_size}, {args.threads} thread(s), {args.steps} steps (2 warm-up)")
    print(f"{'':>6}{'images/s':>10}  loss per step")
    print(f"{'fp32':>6}{fp32:>10.1f}  " + " ".join(f"{v:.3f}" for v in l32))
    print(f"{'bf16':>6}{bf16:>10.1f}  " + " ".join(f"{v:.3f}" for v in l16))
    print(f"bf16 / fp32: {bf16 / fp32:.2f}x; largest loss difference {max(abs(a - b) for a, b in zip(l32, l16)):.3f}")


if __name__ == "__main__":
    main()
