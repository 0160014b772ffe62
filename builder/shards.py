"""One shard = one unit of work: ``build_shard(spec, out_dir, cfg)``, plain Python (Ray only wraps it; tests call it
directly). The tar is written with the standard tarfile module (GNU format, fixed mtime, owner and mode, members in
key order, so a rebuild is byte-identical) into a temporary name that is fsync'ed and renamed: a shard either exists
complete under its final name or not at all.
"""

from __future__ import annotations

import functools
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np

from serwild.builder import audio, augment
from serwild.builder.config import AudioConfig
from serwild.builder.corpus import Reject
from serwild.builder.plan import SampleSpec, ShardSpec
from serwild.builder.render import Renderer
from serwild.builder.scan import load_noise
from serwild.data.manifest import sha256_file
from serwild.data.records import ShardRecord
from serwild.processes.atomic import atomic_write


def build_shard(spec: ShardSpec, out_dir: str, cfg: AudioConfig) -> tuple[ShardRecord, list[dict]]:
    """Render every sample of ``spec`` and write ``out_dir/spec.path`` atomically: its manifest
    record, and the blocks that could not be rendered (as ``Reject`` dicts)."""
    final = Path(out_dir) / spec.path
    classes: Counter[str] = Counter()
    rejects: list[Reject] = []
    renderer = Renderer(cfg)
    with atomic_write(final) as f, tarfile.open(fileobj=f, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        for s in spec.samples:  # already in key order
            try:
                png, meta = render_sample(s, renderer)
            except (audio.AudioError, ValueError) as e:
                rejects.append(Reject(s.utterance, f"{s.condition}: {e}", "render", s.path, s.block))
                continue
            write_sample(tar, s.key, {"json": meta, "png": png})
            classes[s.label] += 1
    return ShardRecord(
        path=spec.path, dataset=spec.dataset, split=spec.split, fold=spec.fold, condition=spec.condition,
        snr_db=spec.snr_db, count=sum(classes.values()), class_counts=dict(sorted(classes.items())),
        bytes=final.stat().st_size, sha256=sha256_file(final), digest=spec.digest(cfg.render_key())
    ), [r.to_dict() for r in rejects]


def write_sample(tar: tarfile.TarFile, key: str, members: dict[str, bytes]) -> None:
    """``key.ext`` members, extensions sorted, as webdataset's ``TarWriter`` lays them out.
    Not TarWriter itself: importing webdataset imports torch, which would add ~500 MB to
    every Ray worker's resident memory; and an integer mtime in GNU format avoids the pax
    header a float mtime adds to every member (~3 % of a shard)."""
    for ext in sorted(members):
        data = members[ext]
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        info.uname = info.gname = "serwild"
        tar.addfile(info, io.BytesIO(data))


def render_sample(s: SampleSpec, renderer: Renderer) -> tuple[bytes, bytes]:
    """One planned sample → (PNG bytes, JSON bytes)."""
    cfg = renderer.cfg
    y = renderer.block(s.path, s.block, s.native_sr, s.segment)
    gain = None
    if s.snr_db is not None:
        assert s.noise_path is not None and s.noise_offset is not None
        noise = _noise(s.noise_path, cfg.sample_rate)[s.noise_offset:s.noise_offset + len(y)]
        y, gain = augment.mix_at_snr(y, audio.fix_length(noise, len(y)), s.snr_db)
    png = renderer.png(y)
    meta = {
        "label": s.label, "class_index": s.class_index, "dataset": s.dataset, "utterance": s.utterance,
        "speaker": s.speaker, "session": s.session, "source": s.source, "block": s.block,
        # seconds into the source file: a segment's blocks start at the segment's start
        "start_s": round(s.block * cfg.block_seconds + (s.segment[0] if s.segment else 0.0), 6),
        "condition": s.condition, "snr_db": s.snr_db,
        "noise": s.noise,
        "noise_offset_s": None if s.noise_offset is None else round(s.noise_offset / cfg.sample_rate, 6),
        "noise_gain": None if gain is None else round(gain, 8), "split": s.split, "fold": s.fold,
    }
    if s.extra:  # a list's own columns, as is (only then: a build without them keeps its bytes)
        meta["extra"] = dict(s.extra)
    return png, json.dumps(meta, sort_keys=True).encode()


@functools.lru_cache(maxsize=16)
def _noise(path: str, sample_rate: int) -> np.ndarray:
    # Noise files are few and reused by every noisy sample of a shard: decode each once per
    # worker process (bounded: 16 files).
    return load_noise(path, sample_rate)
