"""The demo pipeline, :func:`run_demo` (``serwild demo``; the steps are in its ``--help``):
synthesise → build and verify → train experiment 1 (clean) and 2 (clean + noisy, equal
optimiser steps) → evaluate both on every test condition → compare → Figure 2's spectrograms.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import webdataset as wds
from matplotlib.figure import Figure

from serwild import atomic, torchrun
from serwild.builder.build import run_build
from serwild.config import load_config
from serwild.configs import shipped
from serwild.data.manifest import load_manifest, select_shards, verify_build
from serwild.errors import UsageError
from serwild.evaluate.compare import compare_runs
from serwild.evaluate.evaluate import evaluate_checkpoint
from serwild.trainer.launch import LaunchOptions, train

EXPERIMENTS = {
    "clean": ["train.conditions=[clean]"],
    "augmented": ["train.conditions=[clean, snr15, snr20, snr40]"],
}


def run_demo(config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
             nproc: int | None = None) -> int:
    """The whole demo; 0 on success. ``config`` defaults to the shipped demo.yaml."""
    config = str(config or shipped("demo.yaml"))
    if not Path(config).is_file():
        raise UsageError(f"demo config {config} not found")
    t0 = time.time()
    cfg = load_config(config, overrides)
    _step(f"1-2/4  build shards from {cfg.corpus.root} → {cfg.out}")
    run_build(cfg)
    _, problems = verify_build(cfg.out)
    if problems:
        raise UsageError(f"the fresh build {cfg.out} fails its own verify: {'; '.join(problems[:3])}")
    runs = []
    for name, extra in EXPERIMENTS.items():
        run_name = f"demo-{name}"
        _step(f"3/4  train experiment '{name}' → {cfg.train.run_dir}/{run_name}")
        more = [*overrides, *extra, f"train.name={run_name}"]
        if name == "augmented" and cfg.train.samples_per_epoch == "all":
            # Equal optimiser steps: experiment 2 draws as many samples per epoch as
            # experiment 1 has, so the comparison differs in the data, not in the compute.
            more.append("train.samples_per_epoch=clean")
        opts = LaunchOptions(config=config, overrides=more, nproc=nproc or torchrun.default_nproc(), overwrite=True)
        if train(load_config(config, more), opts) != 0:
            return 1
        runs.append(Path(cfg.train.run_dir) / run_name)
    _step("4/4  evaluate each test condition, compare")
    for r in runs:
        evaluate_checkpoint(r / "best.pt", shards=cfg.out, settings=cfg.eval)
    out = compare_runs(runs, out=Path(cfg.train.run_dir) / "demo-compare", bootstrap=cfg.eval.bootstrap,
                       seed=cfg.eval.bootstrap_seed, alpha=cfg.eval.alpha)
    figure = example_spectrograms(Path(cfg.out), cfg.train.dataset, out / "spectrograms.png")
    print()
    print((out / "compare.md").read_text())
    print(f"reports:  {runs[0]}/report/report.md, {runs[1]}/report/report.md")
    print(f"compare:  {out}/compare.md, {out}/compare.png, {out}/difference.png;  example spectrograms: {figure}")
    print(f"demo took {(time.time() - t0) / 60:.1f} min")
    return 0


def example_spectrograms(build_dir: Path, dataset: str, dest: Path) -> Path:
    """The same test block clean and at the lowest SNR, side by side (the paper's Figure 2)."""
    m = load_manifest(build_dir)
    noisy = min((c for c, s in m["conditions"].items() if s is not None), key=lambda c: m["conditions"][c],
                default=None)
    conds = ["clean"] + ([noisy] if noisy else [])
    images = {}
    for cond in conds:
        shard = select_shards(m, dataset, "test", [cond])[0]
        img, meta = next(iter(wds.WebDataset(str(build_dir / shard["path"]), shardshuffle=False)
                              .decode("rgb8").to_tuple("png", "json")))
        images[cond] = (img, meta)
    fig = Figure(figsize=(5 * len(conds), 4.6))
    for ax, cond in zip(fig.subplots(1, len(conds), squeeze=False)[0], conds):
        img, meta = images[cond]
        ax.imshow(img, extent=(0, 1, 0, 8), aspect="auto")
        snr = "clean" if meta["snr_db"] is None else f"{meta['snr_db']:g} dB SNR ({meta['noise']})"
        ax.set_title(f"{meta['utterance']} block {meta['block']} [{meta['label']}]\n{snr}", fontsize=9)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("frequency (kHz)")
    fig.tight_layout()
    return atomic.save_figure(fig, dest, dpi=110)


def _step(msg: str) -> None:
    print(f"\n=== serwild demo: {msg}", file=sys.stderr, flush=True)
