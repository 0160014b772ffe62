"""The demo pipeline, :func:`run_demo` (``serwild demo``; the steps are in its ``--help``):
synthesise → build and verify → train experiment 1 (clean) and 2 (clean + noisy, equal
optimiser steps) → evaluate both on every test condition → compare → Figure 2's spectrograms.
"""

from __future__ import annotations

import time
from pathlib import Path

import webdataset as wds
from matplotlib.figure import Figure

from serwild.config import load_config
from serwild.configs import shipped
from serwild.data.manifest import load_manifest
from serwild.evaluate.compare import compare_runs
from serwild.pipelines.protocol import DEMO
from serwild.pipelines.reproduce import run_preset
from serwild.processes import atomic


def run_demo(config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
             nproc: int | None = None, overwrite: bool = False) -> int:
    """The whole demo; 0 on success: the protocol's own steps (:func:`~serwild.pipelines.reproduce.run_preset`)
    with the :data:`~serwild.pipelines.protocol.DEMO` preset, then the two runs compared, and Figure 2."""
    config = str(config or shipped("demo.yaml"))
    t0 = time.time()
    cfg = load_config(config, overrides)
    out = Path(cfg.train.run_dir) / f"{cfg.train.name or 'demo'}-compare"
    exps, results, _, _ = run_preset(DEMO, config, overrides, out, nproc, overwrite)
    runs = [Path(results[e.base]["model_dir"]) for e in exps]
    compared = compare_runs(runs, out=out, bootstrap=cfg.eval.bootstrap,
                            seed=cfg.eval.bootstrap_seed, alpha=cfg.eval.alpha)
    out = compared.out
    figure = example_spectrograms(Path(cfg.out), cfg.train.dataset, out / "spectrograms.png")
    print()
    print(compared.markdown)
    print(f"reports:  {runs[0]}/report/report.md, {runs[1]}/report/report.md")
    print(f"compare:  {out}/compare.md, {out}/compare.png, {out}/difference.png;  example spectrograms: {figure}")
    print(f"demo took {(time.time() - t0) / 60:.1f} min")
    return 0


def example_spectrograms(build_dir: Path, dataset: str, dest: Path) -> Path:
    """The same test block clean and at the lowest SNR, side by side (the paper's Figure 2)."""
    m = load_manifest(build_dir)
    noisy = min((c for c, s in m.conditions.items() if s is not None), key=lambda c: m.conditions[c],
                default=None)
    conds = ["clean"] + ([noisy] if noisy else [])
    images = {}
    for cond in conds:
        shard = m.select(dataset, "test", [cond])[0]
        img, meta = next(iter(wds.WebDataset(str(build_dir / shard.path), shardshuffle=False)
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
