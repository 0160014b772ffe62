"""The builder's config sections (composed into :class:`serwild.config.Config`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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


# What a WAV header may claim, for input files and for audio.sample_rate. Validity bounds,
# not modelling choices, hence constants: below 4 kHz no speech band is left (telephone
# speech is 8 kHz), above 384 kHz no recorder writes; a header outside is corrupt or hostile
# (one that says 1 Hz turns 96 KB of samples into 48 000 one-sample "blocks").
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 384000


@dataclass(frozen=True)
class AudioConfig:
    sample_rate: int = 16000
    block_seconds: float = 1.0
    keep_tail: bool = False  # pad the last partial block with zeros instead of dropping it
    n_fft: int = 512
    hop_length: int = 62
    top_db: float = 80.0  # dB range shown in the image (below max - top_db is the darkest blue)
    colormap: str = "jet"
    # A longer file is rejected by the build (listed in rejects.jsonl), and `serwild predict`
    # scores only its first blocks and says so: one file cannot plan unbounded work.
    max_blocks_per_file: int = 3600  # an hour of 1 s blocks

    def __post_init__(self) -> None:
        if self.max_blocks_per_file < 1:
            raise ValueError(f"audio.max_blocks_per_file must be >= 1, got {self.max_blocks_per_file}")
        if self.sample_rate <= 0 or self.block_seconds <= 0:
            raise ValueError("audio.sample_rate and audio.block_seconds must be positive")
        if not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:
            raise ValueError(f"audio.sample_rate must be in {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz, "
                             f"got {self.sample_rate}")
        if self.n_fft < 16 or self.hop_length < 1:
            raise ValueError("audio.n_fft must be >= 16 and audio.hop_length >= 1")
        if self.top_db <= 0:
            raise ValueError(f"audio.top_db must be positive, got {self.top_db}")

    def render_key(self) -> dict[str, object]:
        """The settings that shape a shard's bytes (what a shard's plan digest covers). The
        block cap only decides which files are used, which the plan itself records, so
        changing it does not invalidate shards already built."""
        return {k: v for k, v in asdict(self).items() if k != "max_blocks_per_file"}


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
