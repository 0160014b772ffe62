"""The builder's config sections (composed into :class:`serwild.config.Config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class CorpusConfig:
    # iemocap: an IEMOCAP copy (root holds IEMOCAP_full_release/ or is it);
    # csv: root is a CSV list `path,label,speaker[,session]` (any other corpus);
    # synthetic: the built-in corpus in IEMOCAP's layout, synthesised into root if missing.
    kind: Literal["iemocap", "csv", "synthetic"] = "synthetic"
    root: str = "corpora/synth"
    improvised_only: bool = True
    synth_size: Literal["tiny", "demo", "full"] = "demo"

    def __post_init__(self) -> None:
        if not self.root:
            raise ValueError("corpus.root must not be empty")


@dataclass(frozen=True)
class NoiseConfig:
    dir: str = "corpora/synth/noise"
    # The last `test_fraction` of every noise file is kept for the test conditions and the
    # rest for training, so no test sample ever hears noise a model was trained on.
    test_fraction: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"noise.test_fraction must be in (0, 1), got {self.test_fraction}")


@dataclass(frozen=True)
class SplitConfig:
    # block: the paper's random 80/20 over 1 s blocks (one utterance can straddle train and
    # test); utterance: whole utterances; session: leave sessions out (speaker independent).
    strategy: Literal["block", "utterance", "session"] = "block"
    test_fraction: float = 0.2
    folds: int = 5
    test_sessions: list[str] = field(default_factory=lambda: ["Ses05"])

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"split.test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.folds < 2:
            raise ValueError(f"split.folds must be at least 2, got {self.folds}")


@dataclass(frozen=True)
class AudioConfig:
    sample_rate: int = 16000
    block_seconds: float = 1.0
    keep_tail: bool = False  # pad the last partial block with zeros instead of dropping it
    n_fft: int = 512
    hop_length: int = 62
    top_db: float = 80.0  # dB range shown in the image (below max - top_db is the darkest blue)
    colormap: str = "jet"

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.block_seconds <= 0:
            raise ValueError("audio.sample_rate and audio.block_seconds must be positive")
        if self.n_fft < 16 or self.hop_length < 1:
            raise ValueError("audio.n_fft must be >= 16 and audio.hop_length >= 1")
        if self.top_db <= 0:
            raise ValueError(f"audio.top_db must be positive, got {self.top_db}")


@dataclass(frozen=True)
class ShardConfig:
    max_samples: int = 1000

    def __post_init__(self) -> None:
        if self.max_samples < 1:
            raise ValueError(f"shard.max_samples must be >= 1, got {self.max_samples}")


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: start a local Ray; "auto" or "ray://host:10001": join one
    num_cpus: int | None = None  # local Ray only; None: all cores
