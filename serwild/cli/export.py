"""A trained model as a small folder to hand to someone else, or to upload to the Hub.

    serwild export runs/demo-augmented --out exports/demo-augmented
    serwild export runs/protocol-ahsn-exp2-cv --out exports/ahsn-exp2 --license mit --dataset-id me/serwild-demo
    serwild export runs/demo-augmented/best.pt --out exports/x --onnx       # + model.onnx, checked

Writes into ``--out`` (and nowhere else): model.safetensors (the weights, no optimiser state,
~230 MB for AlexNet), config.json (classes, the audio and rendering settings, the build's
fingerprint, the training recipe and budget, the evaluation summary, versions),
training_config.yaml, README.md (a model card in the Hub's format: metadata with every test
condition's metrics and 95 % intervals, how to use it) and evaluation/ (the run's report,
when the run was evaluated; ``--report`` names another report folder of the same model).
Load it with ``serwild predict --model DIR rec.wav`` or
``Predictor.from_pretrained(DIR)``; upload it with ``hf upload <user>/<name> DIR .``.
``--onnx`` adds model.onnx (image → logits; needs ``pip install 'serwild[onnx]'``), kept only
if onnxruntime's logits match torch's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from serwild.deploy.export import export_run


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_DIR", help="a run folder (its best.pt, else last.pt) or a checkpoint file")
    p.add_argument("--out", required=True, metavar="DIR", help="the export folder (new or empty)")
    p.add_argument("--report", metavar="DIR",
                   help="the evaluation report folder of this model (default: <run>/report when it is this model's)")
    p.add_argument("--onnx", action="store_true",
                   help="also write model.onnx (image → logits), checked against torch with onnxruntime")
    p.add_argument("--license", dest="license_id", metavar="ID",
                   help="the card's licence id (default: mit for the synthetic corpus, else other: the corpus's)")
    p.add_argument("--dataset-id", metavar="HUB_ID", help="the Hub id of the published build the model was trained on")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")


def run(args: argparse.Namespace) -> int:
    out = export_run(args.run, args.out, report_dir=args.report, onnx=args.onnx, license_id=args.license_id,
                     dataset_id=args.dataset_id, overwrite=args.overwrite)
    total = 0
    for f in sorted(p for p in Path(out).rglob("*") if p.is_file()):
        size = f.stat().st_size
        total += size
        print(f"  {f.relative_to(out)}  {size / 1e6:.1f} MB" if size >= 1e5 else f"  {f.relative_to(out)}")
    print(f"exported to {out} ({total / 1e6:.0f} MB)\n"
          f"  use:    serwild predict --model {out} recording.wav\n"
          f"  Python: Predictor.from_pretrained({str(out)!r}).predict_file('recording.wav')")
    return 0
