"""The emotion of each 1 s block of your own recordings, and of each whole file.

    serwild predict --checkpoint runs/<name>/best.pt rec1.wav rec2.flac … [--json]

Any sample rate, mono or stereo (channels are averaged). Each file is cut and rendered
exactly as the builder renders training data (the checkpoint's ``audio`` settings: 1 s
blocks resampled to 16 kHz, peak-normalised, the same STFT and jet colours, the same
image transform), so the model sees what it was trained on. Silent blocks are skipped,
as the builder skips them. Per block: the class probabilities and the most likely class;
per file: the class of the mean of its block logits (as ``serwild evaluate`` scores
utterances), with its probabilities.

A file that is unreadable, shorter than one block, or silent gets a one-line message
(on stderr, or an ``error`` entry with ``--json``) and the other files are still scored.
Exit status: 0 if every file was scored, 1 if any file failed, 2 for a usage error
(e.g. a missing checkpoint).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from serwild.errors import UsageError


@dataclass
class FileResult:
    file: str
    error: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    duration_s: float | None = None
    blocks: list[dict[str, Any]] = field(default_factory=list)  # block, start_s, label, probs
    skipped_blocks: list[int] = field(default_factory=list)  # silent blocks, not scored
    tail_s: float = 0.0  # audio after the last whole block, dropped as the builder drops it
    label: str | None = None  # file level: argmax of the mean block logits
    probs: dict[str, float] | None = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a checkpoint written by serwild train")
    p.add_argument("files", nargs="+", metavar="AUDIO", help="WAV (or FLAC/OGG) files, any rate, mono or stereo")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="blocks per forward pass (default 64)")


def run(args: argparse.Namespace) -> int:
    results, classes = predict_files(args.checkpoint, args.files, device=args.device, batch_size=args.batch_size)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "classes": classes,
                          "files": [asdict(r) for r in results]}, indent=2))
    else:
        for r in results:
            if r.error is None:
                print(format_result(r, classes))
    for r in results:
        if r.error is not None:
            print(f"serwild predict: {r.file}: {r.error}", file=sys.stderr)
    return 1 if any(r.error for r in results) else 0


# ----------------------------------------------------------------------------- library


class Predictor:
    """A checkpoint's model plus the exact render settings it was trained with."""

    def __init__(self, checkpoint: str | Path, device: str = "auto") -> None:
        import torch

        from serwild.config import config_from_resolved
        from serwild.trainer.checkpoint import load_checkpoint
        from serwild.trainer.model import model_from_checkpoint

        if not Path(checkpoint).is_file():
            raise UsageError(f"checkpoint {checkpoint} not found")
        ckpt = load_checkpoint(checkpoint, map_location="cpu")
        self.audio = config_from_resolved(ckpt["config"]).audio
        self.classes: list[str] = list(ckpt["classes"])
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise UsageError("--device cuda, but torch sees no GPU")
        self.device = torch.device("cuda" if use_cuda else "cpu")
        self.model = model_from_checkpoint(ckpt).to(self.device).eval()

    def images(self, path: str | Path) -> tuple[FileResult, Any]:
        """Read and render one file: its FileResult skeleton and a (n, 3, 256, 256) tensor.

        Raises AudioError with the reason a file cannot be scored.
        """
        import torch

        from serwild.builder import audio, augment, render
        from serwild.trainer.transforms import image_transform

        a = self.audio
        if not Path(path).is_file():  # soundfile's own message for this is "System error"
            raise audio.AudioError("file not found" if not Path(path).exists() else "not a file")
        info = audio.probe(path)
        res = FileResult(file=str(path), sample_rate=info.sample_rate, channels=info.channels,
                         duration_s=round(info.seconds, 3))
        n_blocks = audio.block_count(info, a.block_seconds, a.keep_tail)
        if n_blocks == 0:
            raise audio.AudioError(f"shorter than one {a.block_seconds:g} s block ({info.seconds:.2f} s)")
        # The builder's silence rule, on the same native-rate peaks: such blocks were never
        # in training data, so a label for them would be noise.
        peaks = audio.block_peaks(path, info, a.block_seconds, n_blocks)
        usable = [b for b, p in enumerate(peaks) if p >= audio.SILENCE_PEAK]
        if not usable:
            raise audio.AudioError("silent (every block below -80 dBFS)")
        res.skipped_blocks = [b for b in range(n_blocks) if b not in usable]
        res.tail_s = round(max(0.0, info.seconds - n_blocks * a.block_seconds), 3)
        tensors = []
        for b in usable:
            # Exactly the builder's render_sample for a clean block.
            y = audio.read_block(path, b, info.sample_rate, a.block_seconds, a.sample_rate)
            y = augment.peak_normalise(y)
            db = render.power_db(y, a.n_fft, a.hop_length, a.top_db)
            rgb = render.to_rgb(render.to_indices(db, a.top_db), a.colormap)
            tensors.append(image_transform(rgb))
            res.blocks.append({"block": b, "start_s": round(b * a.block_seconds, 6)})
        return res, torch.stack(tensors)

    def predict(self, path: str | Path, batch_size: int = 64) -> FileResult:
        """Score one file; never raises for a bad file (the reason goes into ``error``)."""
        import torch

        from serwild.builder.audio import AudioError

        try:
            res, x = self.images(path)
        except AudioError as e:
            return FileResult(file=str(path), error=str(e))
        with torch.inference_mode():
            logits = torch.cat([self.model(x[i:i + batch_size].to(self.device)).float().cpu()
                                for i in range(0, len(x), batch_size)])
        probs = torch.softmax(logits, dim=1)
        for blk, p in zip(res.blocks, probs.tolist()):
            blk["label"] = self.classes[max(range(len(p)), key=p.__getitem__)]
            blk["probs"] = {c: round(v, 4) for c, v in zip(self.classes, p)}
        file_probs = torch.softmax(logits.mean(dim=0), dim=0).tolist()
        res.label = self.classes[max(range(len(file_probs)), key=file_probs.__getitem__)]
        res.probs = {c: round(v, 4) for c, v in zip(self.classes, file_probs)}
        return res


def predict_files(checkpoint: str | Path, files: list[str], device: str = "auto",
                  batch_size: int = 64) -> tuple[list[FileResult], list[str]]:
    from tqdm import tqdm

    predictor = Predictor(checkpoint, device)
    results = [predictor.predict(f, batch_size)
               for f in tqdm(files, desc="predict", unit="file", disable=len(files) < 5, leave=False)]
    return results, predictor.classes


def format_result(r: FileResult, classes: list[str]) -> str:
    """A readable table: one row per block, then the file's label."""
    skipped = f", {len(r.skipped_blocks)} silent block(s) skipped" if r.skipped_blocks else ""
    skipped += f", last {r.tail_s:.2f} s (under a block) not scored" if r.tail_s > 0.005 else ""
    lines = [f"{r.file}  ({r.duration_s:.2f} s, {r.sample_rate} Hz, {r.channels} ch; "
             f"{len(r.blocks)} block(s) scored{skipped})",
             "  block  start_s  " + "  ".join(f"{c:>5}" for c in classes) + "  label"]
    for b in r.blocks:
        lines.append(f"  {b['block']:>5}  {b['start_s']:>7.2f}  "
                     + "  ".join(f"{b['probs'][c]:>5.2f}" for c in classes) + f"  {b['label']}")
    assert r.probs is not None
    lines.append(f"  {'file':>5}  {'':>7}  " + "  ".join(f"{r.probs[c]:>5.2f}" for c in classes)
                 + f"  {r.label}  (mean of block logits)")
    return "\n".join(lines) + "\n"
