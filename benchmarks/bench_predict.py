"""Peak memory of ``serwild predict`` against the recording's length: streamed vs stacked.

    .venv/bin/python benchmarks/bench_predict.py                    # 1 min vs 60 min (ours), 1 vs 10 min (stacked)
    .venv/bin/python benchmarks/bench_predict.py --minutes 1 30 --stacked-minutes 1 5

Writes speech-like 16 kHz WAVs of each length and a checkpoint with random weights (the
numbers do not matter, only the memory), then runs each case in a fresh process and reads
its peak resident memory (``ru_maxrss``):

- **streamed** (serwild): ``Predictor.predict``, which renders and scores the blocks one
  batch at a time (``eval.batch_size``), so memory should not depend on the length;
- **stacked** (the baseline, serwild before the fix): every block rendered and transformed
  first, the (n, 3, 256, 256) tensor stacked, then scored — memory grows ~0.8 MB per second
  of audio. Run at shorter lengths, since an hour of it needs ~3 GB more.

Prints peak RSS per case and the ratio long/short for each path (target for ours: within 10 %).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000
CHILD = r"""
import json, resource, sys, torch
from serwild.deploy.predict import Predictor
from serwild.data.transforms import image_transform
mode, ckpt, wav, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(1)
p = Predictor(ckpt, device="cpu")
if mode == "streamed":
    res = p.predict(wav, batch)
    n = len(res.blocks)
else:  # the baseline: render everything, stack, then score
    res = p.open(wav)
    x = torch.stack([image_transform(p.renderer.rgb(p.renderer.block(wav, b["block"], res.sample_rate)))
                     for b in res.blocks])
    with torch.inference_mode():
        logits = torch.cat([p.model(x[i:i + batch]) for i in range(0, len(x), batch)])
    n = len(logits)
print(json.dumps({"blocks": n, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_wav(path: Path, minutes: float, seed: int = 0) -> Path:
    """Speech-like audio (harmonics under a syllable-rate envelope), written in chunks."""
    rng = np.random.default_rng(seed)
    with sf.SoundFile(path, "w", samplerate=SR, channels=1, subtype="PCM_16") as f:
        for _ in range(int(minutes * 60)):
            t = np.arange(SR) / SR
            f0 = rng.uniform(110, 260)
            y = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
            y *= 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
            f.write((0.3 * y / np.max(np.abs(y)) + 0.01 * rng.standard_normal(SR)).astype(np.float32))
    return path


def write_checkpoint(path: Path) -> Path:
    from serwild.config import load_config, to_dict
    from serwild.processes.checkpoint import Checkpoint, save_checkpoint
    from serwild.trainer.model import build_model

    cfg = load_config(None, ["train.pretrained=none"])
    save_checkpoint(path, Checkpoint(model=build_model(4).state_dict(), epoch=1, config=to_dict(cfg),
                                      classes=["ang", "hap", "sad", "neu"], dataset="ahsn",
                                      manifest_fingerprint="bench", arch="alexnet"))
    return path


def peak(mode: str, ckpt: Path, wav: Path, batch: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(ckpt), str(wav), str(batch)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs=2, default=[1.0, 60.0], metavar=("SHORT", "LONG"))
    ap.add_argument("--stacked-minutes", type=float, nargs=2, default=[1.0, 10.0], metavar=("SHORT", "LONG"))
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = write_checkpoint(root / "ckpt.pt")
        wavs = {m: write_wav(root / f"{m:g}min.wav", m) for m in {*args.minutes, *args.stacked_minutes}}
        rows = []
        for mode, lengths in (("streamed", args.minutes), ("stacked", args.stacked_minutes)):
            for m in lengths:
                r = peak(mode, ckpt, wavs[m], args.batch)
                rows.append((mode, m, r["blocks"], r["peak_mb"]))
                print(f"{mode:9s} {m:5g} min  {r['blocks']:5d} blocks  peak RSS {r['peak_mb']:7.0f} MB", flush=True)
    print()
    for mode in ("streamed", "stacked"):
        short, long_ = [r for r in rows if r[0] == mode]
        print(f"{mode:9s} peak RSS {long_[1]:g} min / {short[1]:g} min = {long_[3] / short[3]:.3f}"
              + ("   (target: within 1.10)" if mode == "streamed" else ""))
    print(f"\nmachine: {resource.getpagesize()} B pages, batch {args.batch}, torch threads 1")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
