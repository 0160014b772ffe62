"""Any corpus, any label set: six classes (one of them ``calm``), some utterances as segments of
longer recordings, from a CSV → build → train one epoch → evaluate; every stage names the six
classes, HF ``load_dataset`` gives a six-name ClassLabel, and a view with an empty class is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serwild.builder.build import run_build
from serwild.cli import main
from serwild.config import ConfigError, load_config
from tests.builder.conftest import make_noise, tone

pytestmark = pytest.mark.slow
SR = 16000
CLASSES = ["neutral", "calm", "happy", "sad", "angry", "fearful"]


def _corpus(root: Path) -> Path:
    """Per class: 3 whole recordings and 3 segments of one long recording (with gaps between)."""
    rows = ["path,label,speaker,session,start,end,intensity"]  # intensity: a column of the corpus's own
    for c, name in enumerate(CLASSES):
        f0 = 120.0 + 40 * c
        for i in range(3):
            rel = f"{name}/u{i}.wav"
            (root / name).mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, tone(1.2, f0 + i, seed=10 * c + i), SR, subtype="PCM_16")
            rows.append(f"{rel},{name.capitalize()},spk{i},s{i},,,{'HI' if i % 2 else 'LO'}")
        long = np.concatenate([tone(2.0, f0 + 5 + k, seed=100 + 10 * c + k) for k in range(4)])
        sf.write(root / f"{name}/dialog.wav", long, SR, subtype="PCM_16")
        rows += [f"{name}/dialog.wav,{name},spk{k},d{c},{2 * k + 0.3},{2 * k + 1.6},MD" for k in range(3)]
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root / "list.csv"


def test_six_classes_with_segments_end_to_end(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    listing = _corpus(tmp_path / "corpus")
    make_noise(tmp_path / "noise")
    base = ["corpus.kind=csv", f"corpus.root={listing}", f"noise.dir={tmp_path / 'noise'}",
            f"views.six.classes=[{', '.join(CLASSES)}]", "snr_db=[15]", "split.strategy=utterance",
            "split.test_fraction=0.34", "split.folds=2", "shard.max_samples=50"]
    # A seventh class nobody recorded: refused before anything is rendered, naming view and class.
    with pytest.raises(ConfigError, match=r"^dataset 'seven': class 'surprised' has no utterance in this corpus"):
        run_build(load_config(None, [*base, f"views.seven.classes=[{', '.join(CLASSES)}, surprised]",
                                     "datasets=[seven]", f"out={tmp_path / 'refused'}"]), executor="serial")
    assert not any((tmp_path / "refused").rglob("*.tar"))

    out = run_build(load_config(None, [*base, "datasets=[six]", f"out={tmp_path / 'shards'}"]), executor="serial")
    m = json.loads((out / "manifest.json").read_text())
    assert m["datasets"] == {"six": {"classes": CLASSES}}
    assert all(m["counts"]["six"][part]["clean"].get(c) for part in ("train", "test") for c in CLASSES)
    assert "| split | condition | " + " | ".join(CLASSES) + " | total |" in (out / "README.md").read_text()
    metas = _metas(out)
    seg = [x for x in metas if x["utterance"].startswith("dialog_")]
    assert seg and all(x["start_s"] >= 0.3 for x in seg)  # a segment's block starts inside it
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert len({x["utterance"] for x in metas}) + len([r for r in rejects if r["stage"] == "corpus"]) == 36

    # the corpus's own column rides along: every sample's JSON, the manifest, the card's features
    assert {x["extra"]["intensity"] for x in metas} == {"HI", "LO", "MD"} and m["extra_columns"] == ["intensity"]
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(out), "six", split="test")  # the clean test set
    assert ds.features["json"]["class_index"].names == CLASSES
    assert {row["json"]["extra"]["intensity"] for row in ds} <= {"HI", "LO", "MD"}

    runs = tmp_path / "runs"
    train = ["train", "--nproc", "1", f"out={out}", *base, "datasets=[six]",
             f"train.run_dir={runs}", "train.name=six", "train.arch=tiny", "train.pretrained=none",
             "train.batch_size=4", "train.samples_per_epoch=8", "train.epochs=1", "train.num_workers=0",
             "train.timeout_s=120"]
    assert main(train) == 0, capfd.readouterr().err[-3000:]  # the launcher in-process; torchrun's ranks
    import torch

    ckpt = torch.load(runs / "six" / "best.pt", map_location="cpu", weights_only=False)
    assert list(ckpt["classes"]) == CLASSES and ckpt["dataset"] == "six"
    assert main(["evaluate", "--checkpoint", str(runs / "six" / "best.pt"), "--out", str(tmp_path / "report"),
                 "eval.num_workers=0", "eval.batch_size=8", "eval.group_by=intensity"]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    groups = metrics["conditions"]["clean"]["groups"]
    assert groups["by"] == "intensity" and set(groups["values"]) <= {"HI", "LO", "MD"}
    assert sum(v["n"] for v in groups["values"].values()) == metrics["conditions"]["clean"]["block"]["n"]
    assert "## By intensity, per 1 s block" in (tmp_path / "report" / "report.md").read_text()
    assert main(["evaluate", "--checkpoint", str(runs / "six" / "best.pt"), "--out", str(tmp_path / "r2"),
                 "eval.group_by=mood"]) == 2  # not a column of this corpus: one line, before any scoring
    assert "eval.group_by=mood: the build's samples have no such column" in capfd.readouterr().err
    report = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "report").rglob("*")
                       if p.suffix in (".json", ".md", ".csv"))
    assert all(c in report for c in CLASSES)
    import csv

    with open(tmp_path / "report" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["intensity"] for r in rows} <= {"HI", "LO", "MD"} and all(r["intensity"] for r in rows)


def _metas(out: Path) -> list[dict]:
    import tarfile

    metas = []
    for tar in sorted(out.rglob("*.tar")):
        with tarfile.open(tar) as tf:
            metas += [json.loads(tf.extractfile(x).read()) for x in tf.getmembers() if x.name.endswith(".json")]
    return [x for x in metas if x["condition"] == "clean"]
