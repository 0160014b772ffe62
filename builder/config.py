"""The builder's config sections (composed into :class:`serwild.config.Config`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

# Label sets are config: re-exported here, the one builder module the composed config imports.
from serwild.bounds import MAX_FOLDS, SEED_MAX, check_range
from serwild.builder.labels import PRESETS, VIEW_NAME, resolve_views

__all__ = ["PRESETS", "SEED_MAX", "VIEW_NAME", "resolve_views"]



@dataclass(frozen=True)
class CorpusConfig:
    # iemocap: an IEMOCAP copy (root holds IEMOCAP_full_release/ or is it);
    # csv: root is a CSV list `path,label,speaker[,session][,start,end]` (any other corpus);
    # audiofolder: root is a folder laid out for HF's audiofolder (metadata.csv with file_name + a label column);
    # synthetic: the built-in corpus in IEMOCAP's layout, synthesised into root if missing.
    kind: Literal["iemocap", "csv", "audiofolder", "synthetic"] = "synthetic"
    root: str = "corpora/synth"
    improvised_only: bool = True
    synth_size: Literal["tiny", "demo", "full"] = "demo"
    label_column: str = "label"  # csv / audiofolder: the column holding each recording's label

    def __post_init__(self) -> None:
        if not self.root:
            raise ValueError("corpus.root must not be empty")
        if not self.label_column.strip():
            raise ValueError("config key 'corpus.label_column' must not be empty")


@dataclass(frozen=True)
class ViewConfig:
    """A label set (``views.<name>``): the ordered class list (order = class index) and merges."""

    classes: list[str] = field(default_factory=list)
    merge: dict[str, str] = field(default_factory=dict)  # corpus label → the class it counts as (exc: hap)
    # A class with no training or no test sample is refused before rendering; true builds it anyway
    # (the hub card carries a warning): a model would then never learn, or never be scored on, that class.
    allow_empty: bool = False


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
    # test); utterance: whole utterances; speaker: a seeded fraction of the speakers held out
    # (speaker independent, any corpus); session: the sessions named in test_sessions held out.
    strategy: Literal["block", "utterance", "speaker", "session"] = "block"
    test_fraction: float = 0.2  # block, utterance, speaker: the share held out for test
    # The share of the train part held out as the validation part (best.pt is chosen on it), drawn
    # as the test part is (speakers for speaker/session, utterances, blocks), seeded, stratified by
    # class; the same units for every condition. 0: none (the paper's protocol validates on CV folds).
    validation_fraction: float = 0.1
    folds: int = 5  # 2..MAX_FOLDS
    test_sessions: list[str] = field(default_factory=list)  # session: e.g. [Ses05] (IEMOCAP's configs)

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"split.test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"split.validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.folds < 2:
            raise ValueError(f"split.folds must be at least 2, got {self.folds}")
        check_range("split.folds", self.folds, 2, MAX_FOLDS)
        if self.strategy == "session" and not self.test_sessions:
            raise ValueError("config key 'split.test_sessions': split.strategy session holds out the sessions it "
                             "names (e.g. [Ses05] for IEMOCAP); for any corpus, split.strategy speaker holds out a "
                             "seeded split.test_fraction of the speakers")

    def identity(self) -> dict[str, object]:
        """What of this section makes a build's bytes: the test fraction plays no part in a session
        split, nor the sessions in any other."""
        keep: dict[str, object] = {"strategy": self.strategy, "folds": self.folds,
                                   "validation_fraction": self.validation_fraction}
        if self.strategy == "session":
            return {**keep, "test_sessions": list(self.test_sessions)}
        return {**keep, "test_fraction": self.test_fraction}


# What a WAV header may claim, for input files and for audio.sample_rate. Validity bounds,
# not modelling choices, hence constants: below 4 kHz no speech band is left (telephone
# speech is 8 kHz), above 384 kHz no recorder writes; a header outside is corrupt or hostile
# (one that says 1 Hz turns 96 KB of samples into 48 000 one-sample "blocks").
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 384000


# The spectrogram's size: rows = 1 + n_fft // 2, columns = 1 + block samples // hop_length.
MAX_N_FFT = 8192  # 4097 rows
MAX_IMAGE_COLUMNS = 4096  # so one image is at most 4097 x 4096 (a 134 MB complex STFT)
BLOCK_SECONDS = (0.1, 30.0)
MAX_TOP_DB = 200.0  # a dB range past any 32-bit float's
MAX_BLOCKS_PER_FILE = 86400  # a day of 1 s blocks


@dataclass(frozen=True)
class AudioConfig:
    sample_rate: int = 16000  # MIN_SAMPLE_RATE..MAX_SAMPLE_RATE Hz
    block_seconds: float = 1.0  # 0.1..30 s
    keep_tail: bool = False  # pad the last partial block with zeros instead of dropping it
    n_fft: int = 512  # 16..MAX_N_FFT
    hop_length: int = 62  # 1..n_fft, and at most MAX_IMAGE_COLUMNS frames per block
    top_db: float = 80.0  # dB range shown in the image (below max - top_db is the darkest blue); (0, 200]
    colormap: str = "jet"  # any matplotlib colormap name
    # A longer file is rejected by the build (listed in rejects.jsonl), and `serwild predict`
    # scores only its first blocks and says so: one file cannot plan unbounded work.
    max_blocks_per_file: int = 3600  # an hour of 1 s blocks; 1..MAX_BLOCKS_PER_FILE

    def __post_init__(self) -> None:
        check_range("audio.sample_rate", self.sample_rate, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
        check_range("audio.block_seconds", self.block_seconds, *BLOCK_SECONDS)
        check_range("audio.n_fft", self.n_fft, 16, MAX_N_FFT)
        check_range("audio.hop_length", self.hop_length, 1, self.n_fft)
        columns = 1 + int(round(self.block_seconds * self.sample_rate)) // self.hop_length
        if columns > MAX_IMAGE_COLUMNS:
            raise ValueError(f"config key 'audio.hop_length': {self.hop_length} gives {columns} image columns per "
                             f"{self.block_seconds:g} s block at {self.sample_rate} Hz, at most {MAX_IMAGE_COLUMNS}")
        if not 0.0 < self.top_db <= MAX_TOP_DB:
            raise ValueError(f"config key 'audio.top_db' must be in (0, {MAX_TOP_DB:g}], got {self.top_db}")
        check_colormap(self.colormap)
        check_range("audio.max_blocks_per_file", self.max_blocks_per_file, 1, MAX_BLOCKS_PER_FILE)

    def render_key(self) -> dict[str, object]:
        """The settings that shape a shard's bytes (what a shard's plan digest covers). The
        block cap only decides which files are used, which the plan itself records, so
        changing it does not invalidate shards already built."""
        return {k: v for k, v in asdict(self).items() if k != "max_blocks_per_file"}


def check_colormap(name: str) -> None:
    """Raise ValueError unless matplotlib knows the colormap ``name``."""
    if name == "jet":  # the default, always there: spares every config the import of matplotlib (0.4 s)
        return
    import matplotlib  # here: `serwild verify` and the CLI's config checks need no plotting library

    if name not in matplotlib.colormaps:
        raise ValueError(f"config key 'audio.colormap': matplotlib has no colormap {name!r} "
                         "(e.g. jet, viridis, magma)")


@dataclass(frozen=True)
class ShardConfig:
    max_samples: int = 1000  # 1..100000 per shard: a shard stays a file of at most a few GB

    def __post_init__(self) -> None:
        check_range("shard.max_samples", self.max_samples, 1, 100_000)


@dataclass(frozen=True)
class CardConfig:
    """What the Hub's dataset and model cards say of the corpus (both cards read this section):
    left empty, each key is defaulted from corpus.kind where serwild knows the corpus (IEMOCAP,
    the synthetic one), and a CSV or audiofolder corpus is ``license: unknown`` until you say."""

    pretty_name: str | None = None  # e.g. "CREMA-D noisy spectrograms"
    license: str | None = None  # a Hub licence id (cc-by-4.0, mit, other…)
    license_name: str | None = None  # with license: other, a short name of it
    license_link: str | None = None  # where the licence is (a URL, or LICENSE in the repo)
    language: list[str] = field(default_factory=list)  # ISO 639-1 codes of the speech, e.g. [en]
    source_datasets: list[str] = field(default_factory=list)  # e.g. [crema-d] or a Hub id
    citation: str | None = None  # the corpus's BibTeX entry
    description: str | None = None  # a paragraph about the corpus, for both cards

    def __post_init__(self) -> None:
        for key in ("pretty_name", "license", "license_name", "license_link", "citation", "description"):
            value = getattr(self, key)
            if value is not None and len(value) > MAX_CARD_TEXT:
                raise ValueError(f"config key 'card.{key}' is longer than {MAX_CARD_TEXT} characters")


MAX_CARD_TEXT = 20_000
