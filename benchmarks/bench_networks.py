"""The paper's future work, answered at equal CPU time: each network of serwild's short list
trained from scratch, with and without the noise augmentation, on the demo corpus.

    .venv/bin/python benchmarks/bench_networks.py                        # 10 min per run, 4 networks
    .venv/bin/python benchmarks/bench_networks.py --minutes 3 --arch alexnet resnet18 mobilenet_v3_small
    .venv/bin/python benchmarks/bench_networks.py --build shards/demo --out bench-networks

For each network: its parameters; its training rate on this machine (images/s, the scratch
recipe's step on 256×256 images, batch 16, measured in-process before the runs); inference ms
per 1 s block on one core (the forward pass of one image, median of 20); its export size
(float32 weights); then two runs, ``demo-clean`` (clean blocks) and ``demo-augmented`` (clean +
15/20/40 dB, the same number of steps), each given the same CPU time: the epochs that the
measured rate fits in ``--minutes`` (at least one), ``samples_per_epoch: clean``, the build's
validation part choosing ``best.pt``. Each is evaluated on every test condition (weighted F1
and UA with their 95 % intervals), and every model flagged by the health check is marked ⚠
(under-trained, never predicts a class, at chance). Runs are ordinary `serwild train` /
`serwild evaluate` subprocesses; the table (markdown) and ``results.json`` go to ``--out``.

A network "beats" AlexNet at 15 dB only where both UA intervals do not overlap; the script says
which did, or that none did. Equal CPU time is the fair comparison for a CPU-only lab: a small
network sees more images in the same minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from serwild.evaluate.document import read_report
from serwild.trainer.model import build_model

CONDITIONS = ("clean", "snr15", "snr20", "snr40")
EXPERIMENTS = {"clean": "[clean]", "augmented": "[clean, snr15, snr20, snr40]"}


def training_rate(arch: str, k: int, batch: int = 16, steps: int = 8) -> float:
    """Images/s of the scratch recipe's step (Adam, every layer) on random 256×256 images."""
    torch.manual_seed(0)
    model = build_model(k, "none", arch).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = torch.randn(batch, 3, 256, 256), torch.randint(0, k, (batch,))
    start = 0.0
    for i in range(steps):
        if i == 2:  # after two warm-up steps
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch * (steps - 2) / (time.perf_counter() - start)


def inference_ms(arch: str, k: int) -> float:
    """Median ms of one image's forward pass on one core (what a 1 s block costs after rendering)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = build_model(k, "none", arch).eval()
    x = torch.randn(1, 3, 256, 256)
    times = []
    with torch.inference_mode():
        for _ in range(23):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    torch.set_num_threads(threads)
    return 1000 * sorted(times[3:])[len(times[3:]) // 2]


def serwild(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "serwild", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench_networks: serwild {' '.join(args[:2])} failed:\n{done.stderr[-2000:]}")


def run_one(build: Path, out: Path, arch: str, exp: str, epochs: int) -> dict[str, Any]:
    name = f"{arch}-{exp}"
    serwild("train", "--config", "demo", f"train.shards={build}", f"train.run_dir={out / 'runs'}",
            f"train.name={name}", f"train.arch={arch}", "train.pretrained=none", f"train.epochs={epochs}",
            "train.patience=null", "train.samples_per_epoch=clean", f"train.conditions={EXPERIMENTS[exp]}",
            "--overwrite")
    report = out / "reports" / name
    serwild("evaluate", "--checkpoint", str(out / "runs" / name / "best.pt"), "--shards", str(build),
            "--out", str(report))
    m = read_report(report / "metrics.json")
    per = {}
    for cond in CONDITIONS:
        block = m.conditions[cond]["block"]
        value = {"weighted_f1": block["weighted"]["f1"], "ua": block["ua"]}
        per[cond] = {k: (value[k], block["ci"][k]["low"], block["ci"][k]["high"]) for k in value}
    return {"conditions": per, "flags": (m.flags or {}).get("messages", []), "epochs": epochs}


def cell(v: tuple[float, float, float]) -> str:
    return f"{v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| network | params (M) | train img/s | infer ms/block | export MB | experiment | epochs | "
            + " | ".join(f"wF1 {c}" for c in CONDITIONS) + " | UA snr15 |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        for exp, res in r["runs"].items():
            mark = " ⚠" if res["flags"] else ""
            lines.append(f"| {r['arch']} | {r['params_m']:.1f} | {r['train_img_s']:.1f} | {r['infer_ms']:.0f} | "
                         f"{r['export_mb']:.0f} | {exp}{mark} | {res['epochs']} | "
                         + " | ".join(cell(res["conditions"][c]["weighted_f1"]) for c in CONDITIONS)
                         + f" | {cell(res['conditions']['snr15']['ua'])} |")
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]]) -> str:
    """Which networks beat AlexNet's UA at 15 dB (augmented runs) with intervals apart."""
    base = next((r for r in rows if r["arch"] == "alexnet"), None)
    if base is None:
        return "no alexnet run: nothing to compare against"
    _, _, top = base["runs"]["augmented"]["conditions"]["snr15"]["ua"]
    beat = [r["arch"] for r in rows if r["arch"] != "alexnet"
            and r["runs"]["augmented"]["conditions"]["snr15"]["ua"][1] > top]
    return (f"beat AlexNet's UA at 15 dB (augmented, intervals apart): {', '.join(beat)}" if beat
            else "no network beat AlexNet's UA at 15 dB (augmented) with intervals apart at this budget")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="shards/demo", help="a demo build (made with configs/demo.yaml if missing)")
    ap.add_argument("--out", default="bench-networks", help="runs, reports, table.md and results.json")
    ap.add_argument("--minutes", type=float, default=10.0, help="CPU time per run (default 10)")
    ap.add_argument("--arch", nargs="+", default=["alexnet", "resnet18", "mobilenet_v3_small", "efficientnet_b0"])
    args = ap.parse_args()
    build, out = Path(args.build), Path(args.out)
    if not (build / "manifest.json").is_file():
        serwild("build", "--config", "demo", f"out={build}")
    manifest = json.loads((build / "manifest.json").read_text())
    dataset = next(iter(manifest["datasets"]))
    k = len(manifest["datasets"][dataset]["classes"])
    clean = sum(s["count"] for s in manifest["shards"] if s["dataset"] == dataset and s["split"] == "train"
                and s["condition"] == "clean")
    # Every rate is measured before any run, so the runs' budgets come from one quiet machine.
    rows = []
    for arch in args.arch:
        rate = training_rate(arch, k)
        params = sum(p.numel() for p in build_model(k, "none", arch).parameters())
        epochs = max(1, round(args.minutes * 60 * rate / clean))
        print(f"{arch}: {params / 1e6:.1f} M parameters, {rate:.1f} images/s: {epochs} epoch(s) of {clean} "
              f"images in {args.minutes:g} min", flush=True)
        rows.append({"arch": arch, "params_m": params / 1e6, "train_img_s": rate, "infer_ms": inference_ms(arch, k),
                     "export_mb": params * 4 / 2**20, "epochs": epochs})
    for r in rows:
        r["runs"] = {exp: run_one(build, out, r["arch"], exp, r["epochs"]) for exp in EXPERIMENTS}
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(rows, indent=1))  # what is done survives a stop
        print(f"{r['arch']}: done", flush=True)
    text = f"{table(rows)}\n\n{verdict(rows)}\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()
