"""README.md for a finished build: the dataset card hubs read (the Hugging Face Hub, and
``datasets.load_dataset(<build folder>, <dataset>)``), made from the manifest alone; splits: docs/publishing.md.

Its front matter types every field in ``dataset_info.features``. Without the types ``datasets`` infers the schema
from a shard's first five samples, and a clean sample's ``null`` ``snr_db``/``noise``/``noise_gain`` types those
columns ``null``, so the first noisy sample fails with "Couldn't cast array of type string to null". Tests run the
card's load snippets against a real build.
"""

from __future__ import annotations

import re
import string
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from serwild.data import hubtables
from serwild.data.manifest import Manifest
from serwild.data.records import ShardRecord
from serwild.processes import atomic

# Every key of a sample's ``.json`` (builder.shards.render_sample) and its type in the card.
# Nullable: snr_db, noise, noise_offset_s, noise_gain (clean samples) and fold (test samples);
# an arrow column of any type holds nulls, what matters is that it is not typed ``null``.
SAMPLE_FIELDS: dict[str, str] = {
    "block": "int64",
    "class_index": "class_label",  # int64 on disk; the card names the classes
    "condition": "string",
    "dataset": "string",
    "fold": "int64",
    "label": "string",
    "noise": "string",
    "noise_gain": "float64",
    "noise_offset_s": "float64",
    "session": "string",
    "snr_db": "float64",
    "source": "string",
    "speaker": "string",
    "split": "string",
    "start_s": "float64",
    "utterance": "string",
}
NULLABLE_FIELDS = ("fold", "noise", "noise_gain", "noise_offset_s", "snr_db")


def split_globs(manifest: Manifest, dataset: str) -> dict[str, str]:
    """Hub split name → file glob (relative to the build root) for one dataset's config: ``train``, ``validation``
    (where built) and ``test`` are the clean blocks, each noisy condition its own ``train_<cond>``…, so
    ``load_dataset(b, view)["train"]`` is never a mixture of clean and noisy speech."""
    globs: dict[str, str] = {}
    built = {s.split for s in manifest.shards if s.dataset == dataset}
    for part in [p for p in ("train", "validation", "test") if p in built]:
        folder = f"{dataset}/{part}/*" if part == "train" else f"{dataset}/{part}"
        for cond in manifest.conditions:
            globs[part if cond == "clean" else f"{part}_{cond}"] = f"{folder}/{cond}-*.tar"
    return globs


def _glob_re(glob: str) -> re.Pattern[str]:
    # The hub's (fsspec) globs: '*' stays within one path segment.
    return re.compile("[^/]*".join(re.escape(part) for part in glob.split("*")))


def split_shards(manifest: Manifest, dataset: str) -> dict[str, list[ShardRecord]]:
    """Hub split name → the manifest's shard records its glob matches. Raises ValueError if
    a shard of ``dataset`` matches no split or two (the card would lose or double it)."""
    patterns = {name: _glob_re(g) for name, g in split_globs(manifest, dataset).items()}
    out: dict[str, list[ShardRecord]] = {name: [] for name in patterns}
    for s in manifest.shards:
        if s.dataset != dataset:
            continue
        hits = [name for name, p in patterns.items() if p.fullmatch(s.path)]
        if len(hits) != 1:
            raise ValueError(f"shard {s.path} matches {len(hits)} card splits ({', '.join(hits) or 'none'})")
        out[hits[0]].append(s)
    return out


def features(manifest: Manifest, dataset: str) -> list[dict[str, Any]]:
    """``dataset_info.features`` of one config, in the hub's YAML form (columns as named by
    ``datasets``' webdataset loader: one per member extension, plus ``__key__``/``__url__``)."""
    classes = manifest.classes(dataset)
    fields: list[dict[str, Any]] = []
    for name, dtype in SAMPLE_FIELDS.items():
        if dtype == "class_label":
            names = {str(i): c for i, c in enumerate(classes)}
            fields.append({"name": name, "dtype": {"class_label": {"names": names}}})
        else:
            fields.append({"name": name, "dtype": dtype})
    if manifest.extra_columns:  # the list's own columns, text, under "extra" (keys sorted, as in the JSON)
        fields.append({"name": "extra", "struct": [{"name": c, "dtype": "string"} for c in manifest.extra_columns]})
        fields.sort(key=lambda f: f["name"])
    return [
        {"name": "png", "dtype": {"image": {"mode": "RGB"}}},  # palette PNGs, decoded to RGB
        {"name": "json", "struct": fields},
        {"name": "__key__", "dtype": "string"},
        {"name": "__url__", "dtype": "string"},
    ]


PAPER_BIBTEX = """@article{yusuf2022noise,
  title   = {Speech Emotion Recognition using a Novel Noise Augmentation Approach and Deep Learning},
  author  = {Yusuf, Shehu Mohammed and Adedokun, E. A. and Mu'azu, M. B. and Umoh, I. J.},
  year    = {2022},
  note    = {Department of Computer Engineering, Ahmadu Bello University, Zaria}
}"""
IEMOCAP_BIBTEX = """@article{busso2008iemocap,
  title   = {{IEMOCAP}: Interactive emotional dyadic motion capture database},
  author  = {Busso, Carlos and Bulut, Murtaza and Lee, Chi-Chun and Kazemzadeh, Abe and Mower, Emily and
             Kim, Samuel and Chang, Jeannette N. and Lee, Sungbok and Narayanan, Shrikanth S.},
  journal = {Language Resources and Evaluation},
  volume  = {42},
  number  = {4},
  pages   = {335--359},
  year    = {2008},
  doi     = {10.1007/s10579-008-9076-6}
}"""
# What serwild knows of a corpus kind; the card: section overrides any of it. A CSV or audiofolder
# corpus is anyone's: its licence is unknown until the user says (never IEMOCAP's).
CORPUS_CARDS: dict[str, dict[str, Any]] = {
    "iemocap": {"pretty_name": "IEMOCAP noisy speech-emotion spectrograms", "license": "other",
                "license_name": "iemocap", "license_link": "https://sail.usc.edu/iemocap/iemocap_release.htm",
                "language": ["en"], "source_datasets": ["IEMOCAP"], "citation": IEMOCAP_BIBTEX,
                "description": "IEMOCAP (Busso et al., 2008): dyadic sessions of ten actors, English."},
    "synthetic": {"pretty_name": "serwild synthetic noisy speech-emotion spectrograms", "license": "mit",
                  "language": [], "source_datasets": ["original"],
                  "description": "serwild's synthetic corpus: voices whose emotions differ in prosody, and classroom "
                                 "noise (babble, ventilation, chairs and doors), generated by `serwild synth`."},
}


def corpus_card(config: dict[str, Any]) -> dict[str, Any]:
    """The card fields of a build's corpus: its ``card:`` section over what serwild knows of its
    kind; ``license`` is ``unknown`` where neither says."""
    kind = (config.get("corpus") or {}).get("kind", "unknown")
    given = {k: v for k, v in (config.get("card") or {}).items() if v not in (None, [], "")}
    out: dict[str, Any] = {"pretty_name": f"serwild noisy speech-emotion spectrograms ({kind} corpus)",
                           "license": "unknown", "language": [], "source_datasets": [], "citation": None,
                           "description": None, **CORPUS_CARDS.get(kind, {}), **given}
    if "license" in given and "license_name" not in given and given["license"] != "other":
        out.pop("license_name", None)
        if "license_link" not in given:
            out.pop("license_link", None)
    return out


def hub_fields(card: dict[str, Any]) -> dict[str, Any]:
    """The Hub's metadata keys of a resolved :func:`corpus_card` (empty ones left out)."""
    keys = ("pretty_name", "license", "license_name", "license_link", "language", "source_datasets")
    return {k: card[k] for k in keys if card.get(k) not in (None, [], "")}


def citation_section(card: dict[str, Any], what: str) -> list[str]:
    """``## Citation``: the method's BibTeX, and the corpus's when known (or given in card.citation)."""
    lines = ["## Citation", "", f"{what} follows the method of Yusuf et al. (2022):", "", "```bibtex", PAPER_BIBTEX,
             "```", ""]
    if card.get("citation"):
        lines += ["Cite the corpus too:", "", "```bibtex", card["citation"].strip(), "```", ""]
    else:
        lines += ["Cite the corpus too (set `card.citation` to its BibTeX to have it here).", ""]
    return lines


def card_metadata(manifest: Manifest, hub: bool = False) -> dict[str, Any]:
    """The front matter as a dict (configs, dataset_info, and the hub's descriptive keys). ``hub``:
    the configs read the build's Parquet view (:mod:`serwild.data.hubtables`, top-level columns),
    else its tars (the webdataset loader's columns)."""
    configs, infos = [], []
    extra = list(manifest.extra_columns)
    for d in manifest.datasets:
        by_split = split_shards(manifest, d)
        globs = {name: hubtables.table_path(g) if hub else g for name, g in split_globs(manifest, d).items()}
        configs.append({"config_name": d, "data_files": [{"split": name, "path": globs[name]} for name in globs]})
        infos.append({
            "config_name": d,
            "features": (hubtables.card_features(manifest.classes(d), extra) if hub
                         else features(manifest, d)),
            # num_bytes: the shards' size (an arrow table of the same PNG bytes is about as large)
            "splits": [{"name": name, "num_bytes": sum(s.bytes for s in recs),
                        "num_examples": sum(s.count for s in recs)} for name, recs in by_split.items()],
            "download_size": sum(s.bytes for recs in by_split.values() for s in recs),
        })
    return {
        **hub_fields(corpus_card(manifest.config)),
        "task_categories": ["audio-classification", "image-classification"],
        "tags": ["speech-emotion-recognition", "spectrogram", "noise-augmentation", "webdataset",
                 *(["parquet"] if hub else [])],
        "size_categories": [_size_category(manifest.samples)],
        "configs": configs,
        "dataset_info": infos,
    }


def card_front_matter(manifest: Manifest, hub: bool = False) -> str:
    """``---`` YAML ``---`` (with the trailing newline)."""
    body = yaml.safe_dump(card_metadata(manifest, hub), sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{body}---\n"


def write_hub_view(build: str | Path, manifest: Manifest) -> tuple[int, int]:
    """The build's Parquet view (``hub/``, one table per shard, made only where missing or stale)
    and its card (README.md) reading it: what ``serwild publish`` uploads. Returns (written, kept)."""
    done = hubtables.write_tables(build, manifest)
    atomic.write_text(Path(build) / "README.md", readme(manifest, hub=True))
    return done


def readme(manifest: Manifest, hub: bool = False) -> str:
    """The whole card: front matter, description, layout, counts, how to load, versions."""
    m = manifest
    card = corpus_card(m.config)
    about = ["## The corpus", "", card["description"], ""] if card.get("description") else []
    licence = [f"Licence: `{card['license']}`" + (f" ({card['license_name']})" if card.get("license_name") else "")
               + (f", {card['license_link']}" if card.get("license_link") else "")
               + (": set `card.license` (and `card.license_link`) to the corpus's licence before publishing."
                  if card["license"] == "unknown" else "."), ""]
    parts = [card_front_matter(m, hub), *_description(m), *about, *licence, *_empty_classes(m), *_layout(m, hub),
             *_counts(m), _load(m, hub), *citation_section(card, "This build"), "## Versions", "",
             ", ".join(f"{k} {v}" for k, v in m.versions.items()), ""]
    return "\n".join(parts)


def _split_line(split: dict[str, Any], held: dict[str, Any]) -> str:
    """How train and test were split, naming what it holds out (the fraction only where it plays a part)."""
    strategy = split.get("strategy", "?")
    how = (f"sessions {', '.join(split.get('test_sessions') or [])} held out" if strategy == "session"
           else f"test fraction {split.get('test_fraction', '?')}"
           + (", speakers held out (seeded, stratified by class)" if strategy == "speaker" else ""))
    val = split.get("validation_fraction") or 0
    line = (f"`{strategy}` ({how}, "
            + (f"validation fraction {val:g} of train held out the same way, " if val else "no validation part, ")
            + f"{split.get('folds', '?')} CV folds over the rest of train; every condition of a block shares its "
            "split and fold)")
    for d, sp in (held.get("datasets") or {}).items():
        n = sum(len(v) for v in sp.values())
        for part in ("test", "validation"):
            if names := sp.get(f"{part}_speakers"):
                line += f"; `{d}` {part} speakers: {', '.join(f'`{x}`' for x in names)} ({len(names)} of {n})"
    return line


def _description(m: Manifest) -> list[str]:
    cfg = m.config
    kind = cfg.get("corpus", {}).get("kind", "?")
    audio, split, noise = cfg.get("audio", {}), cfg.get("split", {}), cfg.get("noise", {})
    image, totals = m.image, m.totals
    conds = list(m.conditions)
    snrs = [v for v in m.conditions.values() if v is not None]
    return [
        "# serwild spectrogram shards",
        "",
        f"Jet spectrograms ({image.get('height', '?')} × {image.get('width', '?')} RGB, low frequencies at the "
        f"bottom) of {audio.get('block_seconds', 1.0):g} s speech blocks from a corpus of kind `{kind}`, "
        f"clean and with real-room noise mixed at {', '.join(f'{s:g}' for s in snrs) or 'no'} dB SNR "
        f"(conditions: {', '.join(conds)}). Built by `serwild build` following Yusuf et al. (2022): 1 s blocks, "
        f"`y = clean + λ·noise`, peak normalisation, power STFT in dB (n_fft {audio.get('n_fft', '?')}, "
        f"hop {audio.get('hop_length', '?')}), matplotlib's jet colours.",
        "",
        f"- split: {_split_line(split, m.split or {})}",
        f"- noise: the last {noise.get('test_fraction', 0):.0%} of every noise file is reserved for test samples",
        f"- seed {cfg.get('seed', '?')}; fingerprint `{m.fingerprint[:16]}…`; {len(m.shards)} shards, "
        f"{m.samples} samples, {totals.get('rejects', 0)} inputs rejected (see `rejects.jsonl`)",
        "",
    ]


def _empty_classes(m: Manifest) -> list[str]:
    """A warning per dataset built with a class that has no training or no test sample (a view's
    ``allow_empty``): a model trained on it never learns that class, or is never scored on it."""
    lines = []
    for d, entry in m.datasets.items():
        for part, classes in entry.empty_classes.items():
            lines.append(f"> **Warning:** `{d}`: class(es) {', '.join(f'`{c}`' for c in classes)} have no "
                         f"{'training' if part == 'train' else 'test'} sample (built with `allow_empty`).")
    return [*lines, ""] if lines else []


def _layout(m: Manifest, hub: bool = False) -> list[str]:
    lines = [
        "## Layout",
        "",
        "WebDataset tar shards, one sample = `KEY.png` (palette PNG) + `KEY.json` (metadata). "
        "`manifest.json` lists every shard with its sample count, class counts and sha256.",
        "",
        *([f"The Hub's view: beside each shard a Parquet table (`{hubtables.HUB_DIR}/<shard path>.parquet`, the "
           "same PNG bytes) with top-level columns `image`, `label` (a `ClassLabel`), "
           f"{', '.join(f'`{c}`' for c, _ in hubtables.COLUMNS)}"
           + (" and the list's own columns" if m.extra_columns else "")
           + ": the configs below read these, so `load_dataset` needs no `map`.", ""] if hub else []),
        "| config | split | files | samples |",
        "| --- | --- | --- | ---: |",
    ]
    for d in m.datasets:
        globs = split_globs(m, d)
        for name, recs in split_shards(m, d).items():
            where = hubtables.table_path(globs[name]) if hub else globs[name]
            lines.append(f"| {d} | {name} | `{where}` | {sum(s.count for s in recs)} |")
    lines += [
        "",
        "`train`, `validation` (where the build holds one) and `test` are the clean blocks (`train` holds every CV "
        "fold: filter on `json.fold`); each noisy condition is its own `train_<condition>`, "
        "`validation_<condition>` and `test_<condition>`, so no split mixes clean and noisy speech. "
        f"`{', '.join(NULLABLE_FIELDS[1:])}` are null for clean samples and `fold` is null outside train.",
        "",
    ]
    return lines


def _counts(m: Manifest) -> list[str]:
    conds = list(m.conditions)
    lines = ["## Counts", ""]
    counts = m.counts
    for d, classes in ((d, v.classes) for d, v in m.datasets.items()):
        lines += [f"### {d}", "", "| split | condition | " + " | ".join(classes) + " | total |",
                  "| --- | --- | " + " | ".join("---:" for _ in classes) + " | ---: |"]
        for sp, by_cond in sorted(counts.get(d, {}).items()):
            for cond in conds:
                row = by_cond.get(cond, {})
                cells = [str(row.get(c, 0)) for c in classes]
                lines.append(f"| {sp} | {cond} | " + " | ".join(cells) + f" | {sum(row.values())} |")
        lines.append("")
    return lines


def _load(m: Manifest, hub: bool = False) -> str:
    """How-to-load snippets from card_load.md (the HF one from card_load_hf.md, or card_load_hub.md with ``hub``),
    this build's first dataset, first noisy condition and image size filled in; a test executes them."""
    image = m.image
    conds = list(m.conditions)
    noisy = next((c for c in conds if m.conditions[c] is not None), conds[0])
    files = resources.files("serwild.builder")
    hf = files.joinpath("card_load_hub.md" if hub else "card_load_hf.md").read_text("utf-8")
    template = string.Template(files.joinpath("card_load.md").read_text("utf-8").replace("$hf", hf))
    return template.substitute(dataset=next(iter(m.datasets)), noisy=noisy, height=image.get("height", 257),
                               width=image.get("width", 259))


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"
