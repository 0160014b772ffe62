"""The emotion of each 1 s block of a recording, and of the whole recording: :class:`Predictor`.

Each recording is cut and rendered exactly as the builder renders training data (the model's
``audio`` settings), so the model sees what it was trained on; silent blocks are skipped, as the
builder skips them. Unlike a build, a file longer than ``audio.max_blocks_per_file`` is scored on
its first blocks (``dropped_blocks`` says how many were not). A recording that cannot be scored gets
an ``error`` instead of a label; the others are still scored. Usage and output: docs/models.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serwild.builder import audio
from serwild.builder.audio import AudioError
from serwild.builder.render import Renderer
from serwild.data.transforms import image_transform
from serwild.deploy.export import Pretrained, read_pretrained
from serwild.errors import UsageError
from serwild.processes.distributed import pick_device
from serwild.progress import progress, stage
from serwild.trainer.model import build_model
from serwild.trainer.outputs import batch_outputs

DEFAULT_BATCH = 64
ARRAY_NAME = "<array>"
INT_SCALE = {np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31}  # PCM → [-1, 1), as soundfile reads it


@dataclass
class Prediction:
    """One recording's result (``asdict`` gives the JSON ``serwild predict --json`` prints)."""

    file: str  # the path, or "<array>" for samples given in memory
    error: str | None = None  # why it could not be scored (then no blocks and no label)
    sample_rate: int | None = None
    channels: int | None = None
    duration_s: float | None = None
    blocks: list[dict[str, Any]] = field(default_factory=list)  # per block: block, start_s, label, probs
    skipped_blocks: list[int] = field(default_factory=list)  # silent blocks, not scored
    tail_s: float = 0.0  # audio after the last whole block, dropped as the builder drops it
    dropped_blocks: int = 0  # blocks past the model's audio.max_blocks_per_file: not scored
    padded_s: float = 0.0  # silence added to a recording shorter than one block (0: none)
    label: str | None = None  # the whole recording: argmax of the mean block logits
    probs: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FileResult = Prediction  # the name of earlier versions


@dataclass(frozen=True)
class Recording:
    """Where a recording's samples come from: a file (read one block at a time) or an array."""

    name: str
    info: audio.AudioInfo
    samples: np.ndarray | None = None  # mono float32 at info.sample_rate; None: read from the file ``name``


# ----------------------------------------------------------------------------- library


class Predictor:
    """A trained model plus the exact renderer it was trained with."""

    def __init__(self, source: str | Path, device: str = "auto", verbose: bool = False) -> None:
        start = time.perf_counter()
        say = _say if verbose else _quiet
        say(f"loading {_describe(Path(source))} …")
        loaded = read_pretrained(source)
        self.source = loaded.source
        self.info = loaded.info
        self.classes: list[str] = list(loaded.classes)
        self.renderer = Renderer(loaded.audio)
        self.device = pick_device(device, 0)
        self.model = _model(loaded).to(self.device).eval()
        a = loaded.audio
        say(f"ready in {time.perf_counter() - start:.1f} s: {loaded.info.get('arch', 'alexnet')}, "
            f"{len(self.classes)} classes "
            f"({', '.join(self.classes)}), dataset {loaded.dataset.upper()}; {a.block_seconds:g} s blocks at "
            f"{a.sample_rate} Hz; on {self.device}")

    @classmethod
    def from_pretrained(cls, source: str | Path, device: str = "auto", verbose: bool = True) -> Predictor:
        """Load an exported model folder (or a run folder, or a checkpoint), saying what it does."""
        return cls(source, device, verbose)

    def predict_file(self, path: str | Path, batch_size: int = DEFAULT_BATCH) -> Prediction:
        """Score one audio file; never raises for a bad file (the reason goes into ``error``)."""
        try:
            res, rec = self.open_file(path)
        except AudioError as e:
            return Prediction(file=str(path), error=str(e))
        return self.score(res, rec, batch_size)

    def predict_array(self, samples: Any, sample_rate: int, batch_size: int = DEFAULT_BATCH,
                      name: str = ARRAY_NAME) -> Prediction:
        """Score samples in memory: 1-D, or 2-D (frames, channels) as soundfile returns them, or
        (channels, frames) as torchaudio does; float in [-1, 1] or int16/int32 PCM. A bad
        recording (silent, NaN) gets an ``error``; an argument that is not audio raises ValueError."""
        mono, channels = to_mono(samples)
        try:
            audio.check_rate(int(sample_rate))
            res, rec = self.open_array(mono, int(sample_rate), channels, name)
        except AudioError as e:
            return Prediction(file=name, error=str(e))
        return self.score(res, rec, batch_size)

    predict = predict_file  # the name of earlier versions

    def stream(self, chunks: Any, sample_rate: int, hop_s: float | None = None, smooth: int = 3) -> Any:
        """Score a live recording chunk by chunk: one :class:`~serwild.deploy.stream.BlockResult`
        per block as soon as it is complete (see :mod:`serwild.deploy.stream`)."""
        from serwild.deploy.stream import stream

        return stream(self, chunks, sample_rate, hop_s, smooth)

    # ------------------------------------------------------------------ the ecosystem's shapes

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.classes))

    @property
    def label2id(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def __call__(self, inputs: Any, top_k: int | None = None, sampling_rate: int | None = None,
                 batch_size: int = DEFAULT_BATCH) -> Any:
        """As ``transformers``' ``pipeline("audio-classification")``: per input (a path, samples, an HF
        ``datasets`` audio dict, or a list of these), the whole recording's ``[{"label", "score"}]`` sorted
        by score, the ``top_k`` first. A recording that cannot be scored raises ValueError naming it
        (``predict_file`` returns its ``error``)."""
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        many = isinstance(inputs, list)
        out = [self._ranked(x, top_k, sampling_rate, batch_size) for x in (inputs if many else [inputs])]
        return out if many else out[0]

    def _ranked(self, x: Any, top_k: int | None, sampling_rate: int | None, batch_size: int) -> list[dict[str, Any]]:
        if isinstance(x, (str, Path)):
            res = self.predict_file(x, batch_size)
        elif isinstance(x, dict):
            samples = x.get("array", x.get("raw"))
            if samples is None or "sampling_rate" not in x:
                raise ValueError("a dict input needs 'array' (or 'raw') and 'sampling_rate', as HF datasets' Audio")
            res = self.predict_array(samples, int(x["sampling_rate"]), batch_size)
        else:
            res = self.predict_array(x, sampling_rate or self.renderer.cfg.sample_rate, batch_size)
        if res.error is not None or res.probs is None:
            raise ValueError(f"{res.file}: {res.error}")
        ranked = sorted(res.probs.items(), key=lambda kv: -kv[1])
        return [{"label": c, "score": p} for c, p in ranked[:top_k or len(ranked)]]

    def classify_batch(self, wavs: Any, wav_lens: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                         list[str]]:
        """As SpeechBrain's ``EncoderClassifier.classify_batch``: ``wavs`` (batch, time) at the
        model's sample rate, padded; ``wav_lens`` each row's length relative to the longest (1.0:
        all of it; None: every row whole). Returns (log-probabilities (batch, K) of each
        recording, the best score, its index, its label). A row that cannot be scored raises."""
        x = wavs.detach().cpu().float() if isinstance(wavs, torch.Tensor) else torch.as_tensor(np.asarray(wavs))
        if x.ndim != 2:
            raise ValueError(f"wavs must be (batch, time), got shape {tuple(x.shape)}")
        lens = torch.ones(len(x)) if wav_lens is None else torch.as_tensor(wav_lens, dtype=torch.float64).cpu()
        rows = []
        for row, rel in zip(x, lens.tolist()):
            n = max(1, int(round(float(rel) * x.shape[1])))
            probs = self._ranked(row[:n].numpy(), None, self.renderer.cfg.sample_rate, DEFAULT_BATCH)
            by_class = {d["label"]: d["score"] for d in probs}
            rows.append([by_class[c] for c in self.classes])
        out_prob = torch.log(torch.tensor(rows, dtype=torch.float64).clamp_min(1e-12)).float()
        score, index = out_prob.max(dim=1)
        return out_prob, score, index, [self.classes[i] for i in index.tolist()]

    # ------------------------------------------------------------------ scanning

    def open(self, path: str | Path) -> Prediction:
        """A file's Prediction skeleton, usable blocks listed (not yet scored); AudioError if none."""
        return self.open_file(path)[0]

    def open_file(self, path: str | Path) -> tuple[Prediction, Recording]:
        if not Path(path).is_file():  # soundfile's own message for this is "System error"
            raise AudioError("file not found" if not Path(path).exists() else "not a file")
        info = audio.probe(path)
        rec = Recording(str(path), info)
        if audio.block_count(info, self.renderer.cfg.block_seconds, self.renderer.cfg.keep_tail) == 0:
            y, _ = audio.read_mono(path)
            return self._short(rec, y), rec
        # The builder's silence rule: silent blocks were never in training data. A file longer
        # than audio.max_blocks_per_file: its first blocks are scored, the result says how many
        # more were not (a build rejects such a file instead).
        found = self.renderer.scan(path, truncate=True)
        return self._skeleton(rec, found.usable, found.silent, found.dropped), rec

    def open_array(self, mono: np.ndarray, sample_rate: int, channels: int = 1,
                   name: str = ARRAY_NAME) -> tuple[Prediction, Recording]:
        """The array counterpart of :meth:`open_file` (``mono``: float32 samples)."""
        if not np.isfinite(mono).all():
            raise AudioError("audio contains NaN or Inf samples")
        rec = Recording(name, audio.AudioInfo(len(mono), sample_rate, channels), mono)
        a = self.renderer.cfg
        if audio.block_count(rec.info, a.block_seconds, a.keep_tail) == 0:
            return self._short(rec, mono), rec
        found = self.renderer.scan_array(mono, sample_rate, channels, truncate=True)  # the builder's rule
        return self._skeleton(rec, found.usable, found.silent, found.dropped), rec

    def _skeleton(self, rec: Recording, usable: tuple[int, ...], silent: tuple[int, ...],
                  dropped: int) -> Prediction:
        a, info = self.renderer.cfg, rec.info
        res = Prediction(file=rec.name, sample_rate=info.sample_rate, channels=info.channels,
                         duration_s=round(info.seconds, 3), skipped_blocks=list(silent), dropped_blocks=dropped)
        n_blocks = len(usable) + len(silent) + dropped
        res.tail_s = round(max(0.0, info.seconds - n_blocks * a.block_seconds), 3)
        res.blocks = [{"block": b, "start_s": round(b * a.block_seconds, 6)} for b in usable]
        return res

    def _short(self, rec: Recording, mono: np.ndarray) -> Prediction:
        """A recording under one block: one block, padded with silence (unless it is silent)."""
        if float(np.abs(mono).max(initial=0.0)) < audio.SILENCE_PEAK:
            raise AudioError(f"silent (below -80 dBFS), and shorter than one block ({rec.info.seconds:.2f} s)")
        res = self._skeleton(rec, (0,), (), 0)
        res.tail_s = 0.0
        res.padded_s = round(self.renderer.cfg.block_seconds - rec.info.seconds, 3)
        return res

    # ------------------------------------------------------------------ scoring

    def waveform(self, res: Prediction, rec: Recording, block: int) -> np.ndarray:
        """Block ``block`` at the model's rate, exactly as the builder reads it (a short
        recording: all of it, resampled, then padded with zeros to one block)."""
        a = self.renderer.cfg
        n_target = int(round(a.block_seconds * a.sample_rate))
        sr = rec.info.sample_rate
        if res.padded_s > 0:
            y = rec.samples if rec.samples is not None else audio.read_mono(rec.name)[0]
            return audio.resample(y, sr, a.sample_rate, length=n_target)
        if rec.samples is None:
            return self.renderer.block(rec.name, block, sr)
        return self.renderer.array_block(rec.samples, sr, block)

    def batches(self, res: Prediction, batch_size: int, rec: Recording | None = None) -> Iterator[torch.Tensor]:
        """The usable blocks as (n, 3, 256, 256) image batches, rendered as they are needed:
        memory stays flat however long the recording is."""
        if rec is None:  # a file scanned by open()
            assert res.sample_rate is not None and res.channels is not None
            rec = Recording(res.file, audio.AudioInfo(int(round((res.duration_s or 0) * res.sample_rate)),
                                                      res.sample_rate, res.channels))
        blocks = [b["block"] for b in res.blocks]
        for i in range(0, len(blocks), batch_size):
            yield torch.stack([image_transform(self.renderer.rgb(self.waveform(res, rec, b)))
                               for b in blocks[i:i + batch_size]])

    def logits(self, images: Iterable[torch.Tensor]) -> torch.Tensor:
        """The float32 logits of image batches, scored through the one evaluation loop
        (:func:`serwild.trainer.outputs.batch_outputs`, as evaluation and validation are)."""
        batches = ((x, torch.zeros(len(x), dtype=torch.long), [""] * len(x)) for x in images)
        outs = [out for out, _, _ in batch_outputs(self.model, batches, self.device)]
        return torch.cat(outs) if outs else torch.zeros(0, len(self.classes))

    def score(self, res: Prediction, rec: Recording, batch_size: int = DEFAULT_BATCH) -> Prediction:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        try:
            logits = self.logits(self.batches(res, batch_size, rec))
        except AudioError as e:
            return Prediction(file=res.file, error=str(e))
        if not bool(torch.isfinite(logits).all()):  # finite weights can still overflow: never report NaN
            return Prediction(file=res.file, error="the model's outputs are not finite (NaN or inf) for this audio")
        probs = torch.softmax(logits, dim=1)
        for blk, p in zip(res.blocks, probs.tolist()):
            blk["label"] = self.classes[max(range(len(p)), key=p.__getitem__)]
            blk["probs"] = {c: round(v, 4) for c, v in zip(self.classes, p)}
        file_probs = torch.softmax(logits.double().mean(dim=0), dim=0).tolist()  # float64: a sum cannot overflow
        res.label = self.classes[max(range(len(file_probs)), key=file_probs.__getitem__)]
        res.probs = {c: round(v, 4) for c, v in zip(self.classes, file_probs)}
        return res


def _model(loaded: Pretrained) -> torch.nn.Module:
    arch = str(loaded.info.get("arch", "alexnet"))  # config.json or the checkpoint: both checked against ARCHS
    model = build_model(len(loaded.classes), pretrained="none", arch=arch)
    try:
        model.load_state_dict(loaded.state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UsageError(f"{loaded.source}: the weights do not fit {arch} with {len(loaded.classes)} classes "
                         f"({first})") from None
    return model.eval()


def _describe(p: Path) -> str:
    if p.is_dir():
        return f"{p} (model folder)"
    if p.is_file():
        return f"{p} ({p.stat().st_size / 1e6:.0f} MB)"
    return str(p)


def _say(msg: str) -> None:
    stage("predict", msg)  # a time-stamped line, told apart from a one-line error (serwild.progress)


def _quiet(msg: str) -> None:
    pass


def to_mono(samples: Any) -> tuple[np.ndarray, int]:
    """Samples (numpy array, torch tensor or list) → (mono float32, channels), as soundfile
    would read them from a file (channels averaged)."""
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    x = np.asarray(samples)
    if x.dtype in INT_SCALE:
        x = x.astype(np.float32) / np.float32(INT_SCALE[x.dtype])
    elif x.dtype.kind == "f":
        x = x.astype(np.float32, copy=False)
    else:
        raise ValueError(f"audio samples must be float or int16/int32 PCM, got dtype {x.dtype}")
    if x.ndim == 2 and x.shape[0] < x.shape[1] and x.shape[0] <= 8:
        x = x.T  # (channels, frames), as torchaudio gives it
    if x.ndim == 1:
        mono = x
    elif x.ndim == 2:
        mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    else:
        raise ValueError(f"audio samples must be 1-D or 2-D (frames, channels), got shape {x.shape}")
    if mono.size == 0:
        raise ValueError("no audio samples (an empty array)")
    return np.ascontiguousarray(mono, dtype=np.float32), 1 if x.ndim == 1 else int(x.shape[1])


def predict_files(model: str | Path, files: list[str], device: str = "auto", batch_size: int = DEFAULT_BATCH,
                  verbose: bool = False) -> tuple[list[Prediction], list[str]]:
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    predictor = Predictor(model, device, verbose)
    with progress(len(files), "predict", unit="file", command="predict", enabled=len(files) >= 5, leave=False) as bar:
        results = []
        for f in files:
            results.append(predictor.predict_file(f, batch_size))
            bar.update(1)
    return results, predictor.classes


def format_result(r: Prediction, classes: list[str]) -> str:
    """A readable table: one row per block, then the recording's label."""
    notes = f", {len(r.skipped_blocks)} silent block(s) skipped" if r.skipped_blocks else ""
    notes += f", last {r.tail_s:.2f} s (under a block) not scored" if r.tail_s > 0.005 else ""
    notes += (f"; shorter than one block: padded with {r.padded_s:.2f} s of silence" if r.padded_s > 0 else "")
    notes += (f"; only the first {len(r.blocks) + len(r.skipped_blocks)} blocks scored "
              f"(audio.max_blocks_per_file), {r.dropped_blocks} more not scored" if r.dropped_blocks else "")
    lines = [f"{r.file}  ({r.duration_s:.2f} s, {r.sample_rate} Hz, {r.channels} ch; "
             f"{len(r.blocks)} block(s) scored{notes})",
             "  block  start_s  " + "  ".join(f"{c:>5}" for c in classes) + "  label"]
    for b in r.blocks:
        lines.append(f"  {b['block']:>5}  {b['start_s']:>7.2f}  "
                     + "  ".join(f"{b['probs'][c]:>5.2f}" for c in classes) + f"  {b['label']}")
    assert r.probs is not None
    lines.append(f"  {'file':>5}  {'':>7}  " + "  ".join(f"{r.probs[c]:>5.2f}" for c in classes)
                 + f"  {r.label}  (mean of block logits)")
    return "\n".join(lines) + "\n"
