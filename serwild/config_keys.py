"""What each config key means, for ``serwild config --keys``: the comment on its line in the
config dataclasses (or the comment just above it), else :data:`KEY_NOTES`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing

from serwild.config import Config

# Keys whose dataclass line has no comment of its own (the others are described where they are defined).
KEY_NOTES = {
    "seed": "root seed: the split, noise draws and (unless train.seed) the data order; 0..2^63-1",
    "out": "the build folder (shards, manifest.json, rejects.jsonl, README.md)",
    "snr_db": "noisy conditions built besides clean, in dB SNR (at most 16 values)",
    "views": "label sets of your own: views.<name>.classes (ordered), .merge {label: class}, .allow_empty",
    "corpus.improvised_only": "iemocap: use the improvised dialogs only (the paper's choice)",
    "corpus.synth_size": "synthetic: tiny | demo | full, when the corpus is synthesised",
    "views.*": "a label set of your own; its name is a folder of the build and a hub config",
    "views.*.allow_empty": "build even when a class has no training or no test sample (the hub card warns)",
    "corpus.kind": "iemocap | csv | audiofolder | synthetic (a CSV list, an HF audiofolder, …)",
    "views.*.classes": "the view's classes, in class-index order (any spelling; at least 2)",
    "corpus": "the input recordings and their labels",
    "corpus.root": "iemocap: the IEMOCAP folder; csv: the CSV file; audiofolder: the folder with metadata.csv",
    "noise": "the noise recordings mixed into the noisy conditions",
    "noise.dir": "folder of .wav/.flac/.ogg noise files",
    "split": "how blocks are split into train (with CV folds) and test",
    "split.test_fraction": "share held out for test (of the units; with the speaker strategy, of the speakers); (0, 1)",
    "split.folds": "cross-validation folds over the train part; 2..100",
    "split.test_sessions": "session strategy: the sessions held out for test (IEMOCAP's configs: [Ses05])",
    "audio": "the spectrogram: block length, STFT and image settings",
    "audio.sample_rate": "every file is resampled to this rate, Hz; 4000..384000",
    "audio.block_seconds": "length of one block (one image), s; 0.1..30",
    "audio.n_fft": "STFT size: the image has 1 + n_fft/2 rows; 16..8192",
    "shard": "WebDataset shard size",
    "ray": "where the build's tasks run",
    "train": "fine-tuning AlexNet (serwild train)",
    "train.dataset": "the dataset (view) of the build to train on; default: ahsn, or the first of datasets",
    "train.conditions": "conditions trained on: [clean] (experiment 1) or clean + SNRs (experiment 2)",
    "train.epochs": "passes over samples_per_epoch samples; 1..10000",
    "train.samples_per_epoch": "samples drawn per epoch: all | clean | a number",
    "train.recipe": "auto | paper (SGD, conv1-4 frozen) | scratch (Adam, all layers)",
    "train.best_metric": "the validation score that picks best.pt",
    "train.device": "auto | cpu | cuda",
    "train.run_dir": "folder the run folders go in",
    "cv": "cross-validation: which fold is held out",
    "eval": "scoring a checkpoint (serwild evaluate)",
    "eval.bootstrap": "bootstrap resamples for confidence intervals; 0..100000 (0: none)",
    "eval.bootstrap_seed": "seed of the bootstrap resampling",
    "remote": "network reads of a build given as a URL",
}


def describe_keys(cls: type = Config, prefix: str = "") -> dict[str, str]:
    """Dotted key → one line of description: the comment on its line in the dataclass (or the
    comment just above it), else :data:`KEY_NOTES`; "" when there is none."""
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        out[key] = KEY_NOTES.get(key) or comments.get(f.name, "")
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(describe_keys(tp, key + "."))
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            out[key + ".*"] = KEY_NOTES.get(key + ".*", "")
            for sub, text in describe_keys(typing.get_args(tp)[1], key + ".*.").items():
                out[sub] = KEY_NOTES.get(sub) or text
    return out


def _field_comments(cls: type) -> dict[str, str]:
    """Field name → its comment in the class's source (trailing, else the comment lines above)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    above: list[str] = []
    for line in lines:
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# ").strip())
            continue
        m = re.match(r"^(\w+)\s*:[^#]*?(?:#\s*(.*))?$", text)
        if m and not text.startswith(("def ", "class ")):
            # The whole comment: `config show` is where a key is explained, and a description cut
            # mid-sentence ("…") explains nothing.
            out[m.group(1)] = (m.group(2) or " ".join(above)).strip()
        above = []
    return out
