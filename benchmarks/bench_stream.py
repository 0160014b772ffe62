"""Live scoring on one CPU core: per-block latency and the real-time factor, per network.

    .venv/bin/python benchmarks/bench_stream.py                  # 60 s of speech, alexnet and tiny
    .venv/bin/python benchmarks/bench_stream.py --seconds 120 --hop 0.5

A speech-like recording is fed to ``Predictor.stream`` in 0.1 s chunks, as ``serwild listen``
reads a microphone, with one thread (``torch.set_num_threads(1)``). For each network (random
weights: the cost does not depend on them):

- **latency**: from the arrival of the chunk that completes a block to the block's result
  (p50 and p95, ms): what a live timeline lags behind the speaker;
- **real-time factor**: compute time / audio time (ours); the baseline is the same blocks
  scored the way ``predict_file`` scores a file after the fact (all blocks rendered, then
  scored in batches of 64), whose total is what an offline tool spends on the same audio.

Prints one row per network and the ratio streamed / offline compute.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import write_wav  # noqa: E402  (the same speech-like audio)

SR = 16000
CHUNK_S = 0.1


def checkpoint(path: Path, arch: str) -> Path:
    from serwild.config import load_config, to_dict
    from serwild.processes.checkpoint import Checkpoint, save_checkpoint
    from serwild.trainer.model import build_model

    cfg = load_config(None, ["train.pretrained=none", f"train.arch={arch}"])
    save_checkpoint(path, Checkpoint(model=build_model(4, arch=arch).state_dict(), epoch=1, config=to_dict(cfg),
                                      classes=["ang", "hap", "sad", "neu"], dataset="ahsn",
                                      manifest_fingerprint="bench", arch=arch))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--hop", type=float, default=None, help="seconds between blocks (default: one block)")
    ap.add_argument("--archs", nargs="+", default=["alexnet", "tiny"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    from serwild.deploy.predict import Predictor

    with tempfile.TemporaryDirectory() as tmp:
        wav = write_wav(Path(tmp) / "speech.wav", args.seconds / 60)
        import soundfile as sf

        samples, _ = sf.read(wav, dtype="float32")
        step = int(CHUNK_S * SR)
        print(f"{args.seconds} s of speech, 0.1 s chunks, hop {args.hop or 1.0:g} s, 1 thread")
        print(f"{'network':>9}{'blocks':>8}{'p50 ms':>9}{'p95 ms':>9}{'RTF stream':>12}{'RTF offline':>13}"
              f"{'stream/offline':>16}")
        for arch in args.archs:
            model = Predictor(checkpoint(Path(tmp) / f"{arch}.pt", arch), device="cpu")
            list(model.stream([samples[:SR]], SR))  # warm-up: the first block allocates
            t0 = time.process_time()
            results = list(model.stream((samples[i:i + step] for i in range(0, len(samples), step)), SR,
                                        hop_s=args.hop))
            streamed = time.process_time() - t0
            t0 = time.process_time()
            model.predict_file(wav)
            offline = time.process_time() - t0
            lat = np.array([r.latency_ms for r in results])
            print(f"{arch:>9}{len(results):>8}{np.percentile(lat, 50):>9.0f}{np.percentile(lat, 95):>9.0f}"
                  f"{streamed / args.seconds:>12.3f}{offline / args.seconds:>13.3f}{streamed / offline:>16.2f}")


if __name__ == "__main__":
    main()
