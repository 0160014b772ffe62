"""manifest.json and DATASET.md (the dataset card) for a finished build."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from serwild import __version__
from serwild.builder.corpus import DATASETS, Reject
from serwild.builder.manifest import FORMAT, counts_table, fingerprint
from serwild.builder.plan import condition_name
from serwild.builder.scan import ScannedUtterance
from serwild.config import Config, to_dict

PACKAGES = ("numpy", "librosa", "soundfile", "pillow", "matplotlib", "webdataset", "ray", "scikit-learn")


def versions() -> dict[str, str]:
    out = {"serwild": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def make_manifest(cfg: Config, records: list[dict], rejects: list[Reject],
                  scanned: list[ScannedUtterance]) -> dict[str, Any]:
    datasets = {d: {"classes": list(DATASETS[d])} for d in cfg.datasets}
    conditions = {condition_name(s): s for s in [None, *cfg.snr_db]}
    shards = sorted(records, key=lambda r: r["path"])
    return {
        "format": FORMAT,
        "fingerprint": fingerprint(shards, datasets),
        "datasets": datasets,
        "conditions": conditions,
        "image": {"format": "png (palette: matplotlib jet)", "height": 1 + cfg.audio.n_fft // 2,
                  "width": 1 + int(round(cfg.audio.block_seconds * cfg.audio.sample_rate)) // cfg.audio.hop_length,
                  "channels": 3, "low_frequencies": "bottom"},
        "totals": {"shards": len(shards), "samples": sum(r["count"] for r in shards),
                   "utterances_used": len(scanned), "rejects": len(rejects)},
        "counts": counts_table(shards),
        "config": to_dict(cfg),
        "versions": versions(),
        "shards": shards,
    }


def dataset_card(m: dict[str, Any]) -> str:
    cfg = m["config"]
    conds = ", ".join(m["conditions"])
    lines = [
        "---",
        "pretty_name: serwild noisy speech-emotion spectrograms",
        "license: other  # inherits the source corpus's licence (IEMOCAP: USC SAIL licence)",
        "task_categories:\n  - audio-classification\n  - image-classification",
        "tags:\n  - speech-emotion-recognition\n  - spectrogram\n  - noise-augmentation\n  - webdataset",
        f"size_categories:\n  - {_size_category(m['totals']['samples'])}",
        "configs:",
    ]
    for d in m["datasets"]:
        lines += [f"  - config_name: {d}", "    data_files:",
                  f"      - split: train\n        path: {d}/train/*/*.tar",
                  f"      - split: test\n        path: {d}/test/*.tar"]
    lines += ["---", "", "# serwild spectrogram shards", "",
              f"Jet spectrograms ({m['image']['height']} × {m['image']['width']} RGB, low frequencies at "
              f"the bottom) of {cfg['audio']['block_seconds']:g} s speech blocks from a "
              f"`{cfg['corpus']['kind']}` corpus, clean and with real-room noise mixed at "
              f"{', '.join(f'{s:g}' for s in cfg['snr_db']) or 'no'} dB SNR (conditions: {conds}).",
              "Built by `serwild build` following Yusuf et al. (2022): 1 s blocks, `y = clean + λ·noise`, "
              "peak normalisation, power STFT in dB (n_fft "
              f"{cfg['audio']['n_fft']}, hop {cfg['audio']['hop_length']}), matplotlib's jet colours.", "",
              f"- split: `{cfg['split']['strategy']}` (test fraction {cfg['split']['test_fraction']}, "
              f"{cfg['split']['folds']} CV folds over train; every condition of a block shares its split and fold)",
              f"- noise: the last {cfg['noise']['test_fraction']:.0%} of every noise file is reserved for test samples",
              f"- seed {cfg['seed']}; fingerprint `{m['fingerprint'][:16]}…`; "
              f"{m['totals']['shards']} shards, {m['totals']['samples']} samples, "
              f"{m['totals']['rejects']} inputs rejected (see `rejects.jsonl`)", "",
              "## Counts", ""]
    for d, classes in ((d, v["classes"]) for d, v in m["datasets"].items()):
        lines += [f"### {d}", "", "| split | condition | " + " | ".join(classes) + " | total |",
                  "| --- | --- | " + " | ".join("---:" for _ in classes) + " | ---: |"]
        for split, by_cond in sorted(m["counts"].get(d, {}).items()):
            for cond in m["conditions"]:
                row = by_cond.get(cond, {})
                cells = [str(row.get(c, 0)) for c in classes]
                lines.append(f"| {split} | {cond} | " + " | ".join(cells) + f" | {sum(row.values())} |")
        lines.append("")
    d0 = next(iter(m["datasets"]))
    lines += ["## Load with plain webdataset", "", "```python", "import json, webdataset as wds",
              "m = json.load(open('manifest.json'))",
              f"urls = [s['path'] for s in m['shards'] if s['dataset'] == '{d0}' and s['split'] == 'test'",
              "        and s['condition'] == 'clean']",
              "ds = wds.WebDataset(urls, shardshuffle=False).decode('rgb8').to_tuple('png', 'json')",
              "img, meta = next(iter(ds))   # (257, 259, 3) uint8, {'label': ..., 'snr_db': ...}", "```", "",
              "Check integrity first: `serwild verify <this folder>` (sha256 and sample counts).", "",
              "## Versions", "", ", ".join(f"{k} {v}" for k, v in m["versions"].items()), ""]
    return "\n".join(lines)


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M"
