"""DATASET.md, the dataset card of a finished build (from its manifest)."""

from __future__ import annotations

from typing import Any


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
