"""Intervals end to end, without training: the evaluator's ``ci`` entries, the report's
``value [low, high]`` cells, and compare's paired Δ intervals from the runs' exact logits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from serwild.cli import main
from serwild.config import load_config
from serwild.errors import UsageError
from serwild.evaluate import compare, report, uncertainty
from serwild.evaluate.document import Report
from serwild.evaluate.evaluate import evaluate_checkpoint
from serwild.metrics import METRICS, condition_metrics

CLASSES = ["ang", "hap", "sad", "neu"]
CONDITIONS = {"clean": None, "snr15": 15.0}
CELL = re.compile(r"^(\d\.\d{3}) \[(\d\.\d{3}), (\d\.\d{3})\]$")


def _outputs(n_utts: int, skill: float, seed: int, truth_seed: int = 0) -> tuple[np.ndarray, np.ndarray, list, list]:
    """Logits of ``n_utts`` utterances × 3 blocks, right on a ``skill`` share of blocks; the
    labels and utterance ids depend only on ``truth_seed`` (the same test blocks for every run)."""
    labels = np.repeat(np.random.default_rng(truth_seed).integers(0, 4, size=n_utts), 3)
    utts = [f"Ses01F_impro01_F{i // 3:03d}" for i in range(3 * n_utts)]
    blocks = [i % 3 for i in range(3 * n_utts)]
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(3 * n_utts, 4))
    logits[np.arange(3 * n_utts), labels] += 6.0 * (rng.random(3 * n_utts) < skill)
    return logits, labels, utts, blocks


def write_run(root: Path, name: str, skills: dict[str, float], seed: int, fingerprint: str = "ab" * 32,
              with_ci: bool = False) -> Path:
    """A run's report folder as `serwild evaluate` writes it, predictions.csv and logits.npz included."""
    conds, outputs = {}, {}
    for j, (c, snr) in enumerate(CONDITIONS.items()):
        logits, labels, utts, blocks = _outputs(40, skills[c], seed * 10 + j, truth_seed=j)
        conds[c] = {"snr_db": snr, "shards": 1, "samples": len(labels),
                    **condition_metrics(logits, labels, utts, CLASSES)}
        if with_ci:
            cis = uncertainty.bootstrap_ci(labels, logits.argmax(1), utts, n_resamples=200, n_classes=4)
            conds[c]["block"]["ci"] = {k: {"low": v["low"], "high": v["high"]} for k, v in cis.items()}
        outputs[c] = {"logits": logits.astype(np.float32), "labels": labels, "utterances": utts, "blocks": blocks}
    result = {
        "format": "serwild-report/1", "run": name, "checkpoint": f"runs/{name}/best.pt", "shards": "shards/x",
        "manifest_fingerprint": fingerprint, "dataset": "ahsn", "classes": CLASSES,
        "protocol": {"dataset": "ahsn", "split_strategy": "block", "train_conditions": ["clean"], "fold": None,
                     "pretrained": "none", "recipe": {}, "epoch": 1},
        "world_size": 1, "device": "cpu", "sha256_checked": True, "serwild_version": "0",
        "uncertainty": ({"method": "percentile cluster bootstrap over utterances", "level": 0.95,
                         "n_resamples": 200, "seed": 0, "alpha": 0.05} if with_ci else None),
        "conditions": conds,
    }
    report.write_report(Report.from_dict(result), root / name / "report", outputs)
    return root / name


def _decisions(run: Path, cond: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels, block decisions, utterances) of one condition, from the run's logits.npz."""
    _, outputs = report.read_logits(run / "report" / report.LOGITS_FILE)
    o = outputs[cond]
    return o["labels"], o["logits"].argmax(1), o["utterances"]


def test_compare_paired_intervals_from_predictions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # clean: B far better than A (interval excludes 0); 15 dB: same skill (it should not)
    a = write_run(tmp_path / "runs", "clean-only", {"clean": 0.3, "snr15": 0.5}, seed=1)
    b = write_run(tmp_path / "runs", "augmented", {"clean": 0.95, "snr15": 0.5}, seed=2)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    comp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    clean, snr15 = comp["deltas"]["augmented"]
    # the interval is the paired cluster bootstrap over the decisions of the runs' exact logits
    y, pa, groups = _decisions(a, "clean")
    y_b, pb, groups_b = _decisions(b, "clean")
    assert np.array_equal(y, y_b) and groups == groups_b
    want = uncertainty.arm_difference_ci(y, [pa], [pb], groups, "weighted_f1", n_resamples=1000, seed=0, n_classes=4)
    assert clean == pytest.approx(want)
    assert clean["excludes_zero"] and clean["low"] > 0
    assert not snr15["excludes_zero"] and snr15["low"] < 0 < snr15["high"]
    # Δ point value = the metrics.json difference, and the cells as documented
    va, vb = comp["values"]["clean-only"][0], comp["values"]["augmented"][0]
    assert vb - va == pytest.approx(want["delta"])
    cell = f"{vb - va:+.3f} [{clean['low']:+.2f}, {clean['high']:+.2f}] *"
    table = compare.markdown_table(comp)
    assert f"| clean | {va:.3f} | {vb:.3f} | {cell} |" in table
    row15 = next(ln for ln in table.splitlines() if ln.startswith("| 15 dB"))
    assert row15.endswith("] |") and "*" not in row15
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert table in md and table in printed
    assert "`*` marks an interval that excludes 0" in md and "`*` marks an interval that excludes 0" in printed
    # per utterance: pairs utterances (40 of them), still paired; the result is returned as written
    result = compare.compare_runs([a, b], out=tmp_path / "cmp-u", unit="utterance", bootstrap=300, seed=3)
    assert result.table == json.loads((result.out / "compare.json").read_text())
    assert result.markdown == (result.out / "compare.md").read_text()
    du = result.table["deltas"]["augmented"][0]
    assert du["low"] <= du["delta"] <= du["high"]


def test_compare_refuses_to_pair_other_builds(tmp_path: Path) -> None:
    a = write_run(tmp_path, "a", {"clean": 0.3, "snr15": 0.5}, seed=1)
    b = write_run(tmp_path, "b", {"clean": 0.9, "snr15": 0.5}, seed=2, fingerprint="cd" * 32)
    result = compare.compare_runs([a, b], out=tmp_path / "cmp")
    comp = result.table
    assert comp["deltas"]["b"] == [None, None] and "different builds" in comp["unpaired"]["b"]
    md = result.markdown
    assert "No interval for b: the runs were evaluated on different builds" in md
    assert "[" not in md.split("| clean |")[1].splitlines()[0]  # a plain Δ, no interval


def test_compare_arms_of_several_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = {name: [write_run(tmp_path, f"{name}-s{s}", skills, seed=10 * i + s) for s in range(2)]
            for i, (name, skills) in enumerate((("clean", {"clean": 0.3, "snr15": 0.3}),
                                                ("augmented", {"clean": 0.9, "snr15": 0.8})))}
    argv = ["compare", "--arm", "clean", *map(str, runs["clean"]), "--arm", "augmented", *map(str, runs["augmented"]),
            "--out", str(tmp_path / "cmp"), "--bootstrap", "500"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    comp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert comp["n_runs"] == {"clean": 2, "augmented": 2} and list(comp["runs"]) == ["clean", "augmented"]
    per_run = [json.loads((r / "report" / "metrics.json").read_text())["conditions"]["clean"]["block"]["weighted"]["f1"]
               for r in runs["clean"]]
    ms = uncertainty.mean_std(per_run)
    assert comp["values"]["clean"][0] == pytest.approx(ms["mean"])
    assert comp["std"]["clean"][0] == pytest.approx(ms["std"])
    assert f"{ms['mean']:.3f} ± {ms['std']:.3f}" in printed
    d = comp["deltas"]["augmented"][0]
    assert d["excludes_zero"] and d["delta"] == pytest.approx(comp["values"]["augmented"][0] - ms["mean"])
    assert "does not include the run-to-run spread" in printed
    # the two-positional form still works, and mixing forms is one clear error
    assert main(["compare", str(runs["clean"][0]), str(runs["augmented"][0]), "--out", str(tmp_path / "c2")]) == 0
    assert main(["compare", str(runs["clean"][0]), "--arm", "x", str(runs["clean"][1])]) == 2
    assert main(["compare", "--arm", "only-a-name"]) == 2
    assert "give a name and at least one run" in capsys.readouterr().err


def test_compare_pairs_the_exact_logits_not_rounded_probabilities(tmp_path: Path) -> None:
    """Two classes a millionth apart in one utterance's logits: rounded to predictions.csv's 4
    decimals they tie (the old reading decided for the first); from logits.npz compare decides
    as metrics.json did, so its Δ is the reports' difference exactly, per block and per utterance."""
    a = write_run(tmp_path, "a", {"clean": 0.5, "snr15": 0.5}, seed=1)
    b = write_run(tmp_path, "b", {"clean": 0.5, "snr15": 0.5}, seed=2)
    path = b / "report" / report.LOGITS_FILE
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    first = (arrays["utterance"] == arrays["utterance"][0]) & (arrays["condition"] == "clean")
    labels = np.asarray(arrays["label"])
    winner = int(labels[first][0]) or 1  # its true class, or class 1 where that is class 0
    arrays["logits"][first] = -5.0
    arrays["logits"][first, 0] = 1.0  # what a tie of rounded probabilities decides for
    arrays["logits"][first, winner] = np.float32(1.0) + np.float32(1e-6)  # what the exact logits decide
    np.savez(path, **arrays)
    result = json.loads((b / "report" / "metrics.json").read_text())
    clean = arrays["condition"] == "clean"
    result["conditions"]["clean"].update(condition_metrics(arrays["logits"][clean], labels[clean],
                                                           arrays["utterance"][clean].tolist(), CLASSES))
    (b / "report" / "metrics.json").write_text(json.dumps(result))
    for unit in ("block", "utterance"):
        comp = compare.compare_runs([a, b], out=tmp_path / f"cmp-{unit}", unit=unit, bootstrap=200).table
        va, vb = comp["values"]["a"][0], comp["values"]["b"][0]
        assert comp["deltas"]["b"][0]["delta"] == pytest.approx(vb - va, abs=1e-12), unit


def test_compare_without_logits_names_the_report_to_redo(tmp_path: Path) -> None:
    a = write_run(tmp_path, "a", {"clean": 0.3, "snr15": 0.5}, seed=1)
    b = write_run(tmp_path, "b", {"clean": 0.9, "snr15": 0.5}, seed=2)
    (b / "report" / report.LOGITS_FILE).unlink()  # a report written before logits.npz existed
    comp = compare.compare_runs([a, b], out=tmp_path / "cmp").table
    assert comp["deltas"]["b"] == [None, None]
    assert comp["unpaired"]["b"] == f"{b / 'report'} has no logits.npz (re-run serwild evaluate)"
    (b / "report" / report.LOGITS_FILE).write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="is not a serwild logits.npz"):
        compare.compare_runs([a, b], out=tmp_path / "cmp")


def test_report_cells_show_intervals(tmp_path: Path) -> None:
    run = write_run(tmp_path, "with-ci", {"clean": 0.7, "snr15": 0.4}, seed=4, with_ci=True)
    result = json.loads((run / "report" / "metrics.json").read_text())
    md = (run / "report" / "report.md").read_text()
    table = md.split("## Per 1 s block")[1].split("## ")[0]
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and "Test condition" not in ln]
    assert [r.split("|")[1].strip() for r in rows] == ["clean", "15 dB"]
    for row, cond in zip(rows, ["clean", "snr15"]):
        m = result["conditions"][cond]["block"]
        cells = [c.strip() for c in row.split("|")[3:-1]]
        assert len(cells) == len(report.COLUMNS)
        for c, col in zip(cells, report.COLUMNS):
            value, low, high = CELL.match(c).groups()  # type: ignore[union-attr]
            ci = m["ci"][col.name]
            assert (value, low, high) == (f"{report.metric(m, col.path):.3f}", f"{ci['low']:.3f}", f"{ci['high']:.3f}")
            assert float(low) <= float(value) <= float(high)
    assert "95% percentile interval from a cluster bootstrap (200 resamples of the test utterances" in md
    # no intervals in the report (bootstrap 0, or an older metrics.json): plain cells, no sentence
    plain = write_run(tmp_path, "no-ci", {"clean": 0.7, "snr15": 0.4}, seed=4)
    md = (plain / "report" / "report.md").read_text()
    assert "Brackets:" not in md and not re.search(r"\d \[\d", md)


def test_evaluate_writes_seeded_intervals(build_and_checkpoint: tuple[Path, Path], tmp_path: Path) -> None:
    build, ckpt = build_and_checkpoint
    settings = load_config(None, ["eval.batch_size=8", "eval.num_workers=0", "eval.device=cpu",
                                  "eval.bootstrap=300", "eval.bootstrap_seed=7"]).eval
    first = json.loads((evaluate_checkpoint(ckpt, out=tmp_path / "r1", settings=settings) / "metrics.json").read_text())
    again = json.loads((evaluate_checkpoint(ckpt, out=tmp_path / "r2", settings=settings) / "metrics.json").read_text())
    assert first["uncertainty"] == {"method": "percentile cluster bootstrap over utterances", "level": 0.95,
                                    "n_resamples": 300, "seed": 7, "alpha": 0.05}
    for cond, c in first["conditions"].items():
        for unit in ("block", "utterance"):
            ci = c[unit]["ci"]
            assert set(ci) == set(METRICS)
            assert ci == again["conditions"][cond][unit]["ci"]  # seeded: the same interval, bit for bit
            for name, path in (("wa", "wa"), ("ua", "ua"), ("weighted_f1", "weighted.f1")):
                assert ci[name]["low"] <= report.metric(c[unit], path) + 1e-12
                assert report.metric(c[unit], path) <= ci[name]["high"] + 1e-12
    assert "Brackets: 95% percentile interval" in (tmp_path / "r1" / "report.md").read_text()
    off = load_config(None, ["eval.batch_size=8", "eval.num_workers=0", "eval.device=cpu", "eval.bootstrap=0"]).eval
    none = json.loads((evaluate_checkpoint(ckpt, out=tmp_path / "r0", settings=off) / "metrics.json").read_text())
    assert none["uncertainty"] is None and all("ci" not in c["block"] for c in none["conditions"].values())
