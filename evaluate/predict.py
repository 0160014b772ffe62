"""The emotion of each 1 s block of your own recordings, and of each whole file.

    serwild predict --checkpoint runs/<name>/best.pt rec1.wav rec2.flac … [--json]

Any sample rate, mono or stereo (channels are averaged). Each file is cut and rendered
exactly as the builder renders training data (the checkpoint's ``audio`` settings: 1 s
blocks resampled to 16 kHz, peak-normalised, the same STFT and jet colours, the same
image transform), so the model sees what it was trained on. Silent blocks are skipped,
as the builder skips them. Per block: the class probabilities and the most likely class;
per file: the class of the mean of its block logits (as ``serwild evaluate`` scores
utterances), with its probabilities.

A file longer than the checkpoint's ``audio.max_blocks_per_file`` (an hour of blocks) is
scored on its first blocks only, and the output says how many were left out
(``dropped_blocks``). A file that is unreadable, whose header claims a sample rate outside
4 kHz..384 kHz, shorter than one block, or silent gets a one-line message
(on stderr, or an ``error`` entry with ``--json``) and the other files are still scored.
Exit status: 0 if every file was scored, 1 if any file failed, 2 for a usage error
(e.g. a missing checkpoint).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from serwild.builder.audio import AudioError
from serwild.builder.render import Renderer
from serwild.checkpoint import load_checkpoint
from serwild.config import config_from_resolved
from serwild.data.transforms import image_transform
from serwild.errors import UsageError
from serwild.trainer.distributed import pick_device
from serwild.trainer.model import model_from_checkpoint

DEFAULT_BATCH = 64


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
    dropped_blocks: int = 0  # blocks past the checkpoint's audio.max_blocks_per_file: not scored
    label: str | None = None  # file level: argmax of the mean block logits
    probs: dict[str, float] | None = None


# ----------------------------------------------------------------------------- library


class Predictor:
    """A checkpoint's model plus the exact renderer it was trained with."""

    def __init__(self, checkpoint: str | Path, device: str = "auto") -> None:
        ckpt = load_checkpoint(checkpoint, map_location="cpu")
        self.renderer = Renderer(config_from_resolved(ckpt["config"]).audio)
        self.classes: list[str] = list(ckpt["classes"])
        self.device = pick_device(device, 0)
        self.model = model_from_checkpoint(ckpt).to(self.device).eval()

    def open(self, path: str | Path) -> FileResult:
        """Scan one file: its FileResult skeleton with the usable blocks listed (not yet scored).

        Raises AudioError with the reason a file cannot be scored.
        """
        if not Path(path).is_file():  # soundfile's own message for this is "System error"
            raise AudioError("file not found" if not Path(path).exists() else "not a file")
        a = self.renderer.cfg
        # The builder's silence rule: silent blocks were never in training data, so a label
        # for them would be noise.
        # A file longer than audio.max_blocks_per_file: its first blocks are scored, and the
        # result says how many more were not (a build rejects such a file instead).
        found = self.renderer.scan(path, truncate=True)
        info = found.info
        res = FileResult(file=str(path), sample_rate=info.sample_rate, channels=info.channels,
                         duration_s=round(info.seconds, 3), skipped_blocks=list(found.silent),
                         dropped_blocks=found.dropped)
        n_blocks = len(found.usable) + len(found.silent) + found.dropped
        res.tail_s = round(max(0.0, info.seconds - n_blocks * a.block_seconds), 3)
        res.blocks = [{"block": b, "start_s": round(b * a.block_seconds, 6)} for b in found.usable]
        return res

    def batches(self, res: FileResult, batch_size: int) -> Iterator[torch.Tensor]:
        """The file's usable blocks as (n, 3, 256, 256) image batches, rendered as they are
        needed: memory stays flat however long the recording is."""
        blocks = [b["block"] for b in res.blocks]
        assert res.sample_rate is not None
        for i in range(0, len(blocks), batch_size):
            yield torch.stack([image_transform(self.renderer.rgb(self.renderer.block(res.file, b, res.sample_rate)))
                               for b in blocks[i:i + batch_size]])

    def predict(self, path: str | Path, batch_size: int = DEFAULT_BATCH) -> FileResult:
        """Score one file; never raises for a bad file (the reason goes into ``error``)."""
        try:
            res = self.open(path)
            with torch.inference_mode():
                logits = torch.cat([self.model(x.to(self.device)).float().cpu()
                                    for x in self.batches(res, batch_size)])
        except AudioError as e:
            return FileResult(file=str(path), error=str(e))
        if not bool(torch.isfinite(logits).all()):  # finite weights can still overflow: never report NaN
            return FileResult(file=str(path), error="the model's outputs are not finite (NaN or inf) for this file")
        probs = torch.softmax(logits, dim=1)
        for blk, p in zip(res.blocks, probs.tolist()):
            blk["label"] = self.classes[max(range(len(p)), key=p.__getitem__)]
            blk["probs"] = {c: round(v, 4) for c, v in zip(self.classes, p)}
        file_probs = torch.softmax(logits.double().mean(dim=0), dim=0).tolist()  # float64: a sum cannot overflow
        res.label = self.classes[max(range(len(file_probs)), key=file_probs.__getitem__)]
        res.probs = {c: round(v, 4) for c, v in zip(self.classes, file_probs)}
        return res


def predict_files(checkpoint: str | Path, files: list[str], device: str = "auto",
                  batch_size: int = DEFAULT_BATCH) -> tuple[list[FileResult], list[str]]:
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    predictor = Predictor(checkpoint, device)
    results = [predictor.predict(f, batch_size)
               for f in tqdm(files, desc="predict", unit="file", disable=len(files) < 5, leave=False)]
    return results, predictor.classes


def format_result(r: FileResult, classes: list[str]) -> str:
    """A readable table: one row per block, then the file's label."""
    skipped = f", {len(r.skipped_blocks)} silent block(s) skipped" if r.skipped_blocks else ""
    skipped += f", last {r.tail_s:.2f} s (under a block) not scored" if r.tail_s > 0.005 else ""
    skipped += (f"; only the first {len(r.blocks) + len(r.skipped_blocks)} blocks scored "
                f"(audio.max_blocks_per_file), {r.dropped_blocks} more not scored" if r.dropped_blocks else "")
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
