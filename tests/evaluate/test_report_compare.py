"""Report folder and `serwild compare`, on metrics computed from made-up model outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serwild.cli import main
from serwild.errors import UsageError
from serwild.evaluate import compare, health, report
from serwild.evaluate.document import Report, read_report
from serwild.metrics import chance_level, condition_metrics

CLASSES = ["ang", "hap", "sad", "neu"]
CONDITIONS = {"snr40": 40.0, "clean": None, "snr15": 15.0, "snr20": 20.0}


def fake_result(run: str, skill: float, seed: int = 0) -> Report:
    """A report dict as `serwild evaluate` builds it; accuracy falls with the SNR."""
    rng = np.random.default_rng(seed)
    conds = {}
    for c, snr in CONDITIONS.items():
        labels = rng.integers(0, 4, size=60)
        utts = [f"Ses01F_impro01_F{i // 3:03d}" for i in range(60)]
        labels = np.repeat(labels[::3], 3)  # 3 blocks per utterance, one label each
        p_right = skill * (1.0 if snr is None else min(1.0, snr / 40.0))
        logits = rng.normal(size=(60, 4))
        logits[np.arange(60), labels] += 4.0 * (rng.random(60) < p_right)
        conds[c] = {"snr_db": snr, "shards": 1, "samples": 60, **condition_metrics(logits, labels, utts, CLASSES)}
    return Report.from_dict({
        "format": "serwild-report/1", "run": run, "checkpoint": f"runs/{run}/best.pt", "shards": "shards/demo",
        "manifest_fingerprint": "ab" * 32, "dataset": "ahsn", "classes": CLASSES,
        "protocol": {"dataset": "ahsn", "split_strategy": "utterance", "train_conditions": ["clean"], "fold": None,
                     "pretrained": "none", "recipe": {"optimizer": "adam", "lr": 1e-4, "freeze": "none"},
                     "epoch": 3},
        "world_size": 1, "device": "cpu", "sha256_checked": True, "serwild_version": "0", "conditions": conds,
    })


def test_report_folder(tmp_path: Path) -> None:
    result = fake_result("clean-only", 0.8)
    logits = np.array([[0.5, 1.25, 2.0, -30.0], [3.0, 0.0, 0.0, 1e-7]], dtype=np.float32)
    outputs = {"clean": {"logits": logits, "labels": np.array([1, 3]), "utterances": ["u0", "u1"], "blocks": [0, 2]}}
    out = report.write_report(result, tmp_path / "report", outputs)
    assert read_report(out / "metrics.json") == Report.from_dict(json.loads(json.dumps(result.to_dict())))
    md = (out / "report.md").read_text()
    assert "**Protocol:** dataset AHSN" in md and "split `utterance`" in md and "pretrained `none`" in md
    assert "optimizer=adam" in md and "trained on clean" in md and "all train folds" in md
    # the paper's table shape: one row per test condition, clean first then rising SNR
    block_table = md.split("## Per 1 s block")[1].split("## ")[0]
    rows_md = [ln for ln in block_table.splitlines() if ln.startswith("| ") and "Test condition" not in ln]
    assert [r.split("|")[1].strip() for r in rows_md] == ["clean", "15 dB", "20 dB", "40 dB"]
    wf1 = result.conditions["snr15"]["block"]["weighted"]["f1"]
    assert f"{wf1:.3f}" in rows_md[1]
    assert "## Per utterance" in md
    with Image.open(out / "confusion.png") as im:  # one figure: a panel per condition
        assert im.size[0] > 4 * 300
    assert not list(out.glob("confusion-*.png"))
    assert (out / "weighted_f1.png").stat().st_size > 1000
    # captions under the figures, in the report (the figures have no titles)
    assert "![weighted F1 per test condition](weighted_f1.png)\n\n*Figure 1." in md
    assert "![confusion matrices](confusion.png)\n\n*Figure 2." in md
    # predictions.csv: for people, probabilities (the softmax) rounded; logits.npz: the exact logits
    lines = (out / "predictions.csv").read_text().splitlines()
    assert lines[0] == "condition,utterance,block,true,predicted,p_ang,p_hap,p_sad,p_neu"
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert lines[1] == "clean,u0,0,hap,sad," + ",".join(f"{p:.4f}" for p in probs[0])
    assert lines[2].startswith("clean,u1,2,neu,ang,")
    classes, back = report.read_logits(out / report.LOGITS_FILE)
    assert classes == CLASSES and list(back) == ["clean"]
    assert back["clean"]["logits"].dtype == np.float32 and np.array_equal(back["clean"]["logits"], logits)
    assert back["clean"]["labels"].tolist() == [1, 3] and back["clean"]["utterances"] == ["u0", "u1"]
    assert back["clean"]["blocks"] == [0, 2]


def _evaluated_run(root: Path, name: str, skill: float, seed: int) -> Path:
    run = root / name
    report.write_report(fake_result(name, skill, seed), run / "report")
    return run


def test_compare_two_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _evaluated_run(tmp_path / "runs", "clean-only", 0.3, 1)
    b = _evaluated_run(tmp_path / "runs", "augmented", 0.9, 2)
    assert main(["compare", str(a), str(b)]) == 0
    out = tmp_path / "runs" / "compare_clean-only_vs_augmented"
    printed = capsys.readouterr().out
    comp = json.loads((out / "compare.json").read_text())
    assert "has no logits.npz (re-run serwild evaluate)" in comp["unpaired"]["augmented"]  # reports without it
    assert comp["labels"] == ["clean", "15 dB", "20 dB", "40 dB"]
    for run_dir, name in ((a, "clean-only"), (b, "augmented")):
        m = json.loads((run_dir / "report" / "metrics.json").read_text())
        assert comp["values"][name] == [m["conditions"][c]["block"]["weighted"]["f1"] for c in comp["conditions"]]
    table = compare.markdown_table(comp)
    assert table in printed and table in (out / "compare.md").read_text()
    delta = comp["values"]["augmented"][1] - comp["values"]["clean-only"][1]
    assert f"| 15 dB | {comp['values']['clean-only'][1]:.3f} | {comp['values']['augmented'][1]:.3f} | {delta:+.3f} |" \
        in table
    with Image.open(out / "compare.png") as im:
        assert im.size[0] > 300


def test_compare_other_metric_unit_and_missing_condition(tmp_path: Path) -> None:
    a = _evaluated_run(tmp_path, "a", 0.5, 1)
    r = fake_result("b", 0.5, 3)
    del r.conditions["snr20"]
    report.write_report(r, tmp_path / "b" / "report")
    result = compare.compare_runs([a / "report", tmp_path / "b" / "report" / "metrics.json"],
                                  out=tmp_path / "cmp", metric="ua", unit="utterance")
    out, comp = result.out, result.table
    assert list(comp["values"]) == ["a", "b"]
    i20 = comp["conditions"].index("snr20")
    assert comp["values"]["b"][i20] is None
    assert comp["values"]["a"][0] == json.loads((a / "report" / "metrics.json").read_text())[
        "conditions"]["clean"]["utterance"]["ua"]
    assert "| 20 dB |" in (out / "compare.md").read_text() and "— |" in (out / "compare.md").read_text()


def test_compare_missing_run_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _evaluated_run(tmp_path, "a", 0.5, 1)
    (tmp_path / "never-evaluated").mkdir()
    with pytest.raises(UsageError, match="never-evaluated"):
        compare.compare_runs([a, tmp_path / "never-evaluated"])
    assert main(["compare", str(a), str(tmp_path / "never-evaluated")]) == 2
    assert "never-evaluated" in capsys.readouterr().err
    assert main(["compare", str(a)]) == 2  # one run is nothing to compare


def _one_class(result: Report, cls: int = 3) -> Report:
    """The same report from a model that answers class ``cls`` for every block."""
    for c in result.conditions.values():
        for unit in ("block", "utterance"):
            cm = np.asarray(c[unit]["confusion"])
            c[unit]["confusion"] = np.outer(cm.sum(axis=1), np.eye(len(CLASSES))[cls]).astype(int).tolist()
    return result


def test_health_flags_one_class_and_chance() -> None:
    good = fake_result("good", 0.9, 1)
    assert health.model_flags(good) == {"degenerate": False, "one_class": None, "never_predicted": [], "at_chance": [],
                                        "still_learning": None, "messages": []}
    bad = _one_class(fake_result("bad", 0.9, 1))
    flags = health.model_flags(bad)
    assert flags["degenerate"] and flags["one_class"] == {"class": "neu", "share": 1.0,
                                                          "where": "all test conditions"}
    assert health.flag_lines("bad", bad) == [
        "⚠ bad: DEGENERATE MODEL: predicts 'neu' for 100% of the blocks (all test conditions): its numbers "
        "describe a model that has not learnt the task"]
    # UA's interval includes chance (1/4) on some conditions: a warning naming them, not "degenerate"
    some = fake_result("some", 0.9, 1)
    for c, (lo, hi) in {"snr15": (0.20, 0.31), "snr20": (0.26, 0.40), "clean": (0.5, 0.9)}.items():
        some.conditions[c]["block"]["ci"] = {"ua": {"low": lo, "high": hi}}
    flags = health.model_flags(some)
    assert flags["at_chance"] == ["15 dB"] and not flags["degenerate"]
    assert flags["messages"] == ["WARNING: its UA or weighted-F1 95 % interval includes chance at 15 dB: on those "
                                 "conditions it cannot be told from guessing"]
    for c in some.conditions.values():
        c["block"]["ci"] = {"ua": {"low": 0.1, "high": 0.3}}
    assert health.model_flags(some)["degenerate"]  # at chance everywhere
    # one class on one condition only (≥ 95 % of its blocks) is flagged, naming the condition
    one = fake_result("one", 0.9, 1)
    cm = np.asarray(one.conditions["snr15"]["block"]["confusion"])
    one.conditions["snr15"]["block"]["confusion"] = np.outer(cm.sum(axis=1), [0, 1, 0, 0]).tolist()
    assert health.model_flags(one)["one_class"] == {"class": "hap", "share": 1.0, "where": "15 dB"}


def test_health_sees_classes_never_predicted_and_weighted_f1_at_chance() -> None:
    """A model that answers only two of four classes clears UA's chance and the one-class rule (the
    newcomer's six-class model that never said ang, dis or hap); the classes it never predicts are
    named, and a weighted-F1 interval that includes its chance is flagged like UA's."""
    two = fake_result("two", 0.9, 1)
    for c in two.conditions.values():
        cm = np.asarray(c["block"]["confusion"])
        rows = cm.sum(axis=1)
        c["block"]["confusion"] = [[0, 0, int(n - n // 2), int(n // 2)] for n in rows]  # only 'sad' and 'neu'
        c["block"]["ci"] = {"ua": {"low": 0.40, "high": 0.60}}  # clear of 1/4
    flags = health.model_flags(two)
    assert flags["one_class"] is None and flags["at_chance"] == [] and not flags["degenerate"]
    assert flags["never_predicted"] == ["ang", "hap"]
    assert flags["messages"] == ["WARNING: never (under 1% of the blocks) predicts 'ang', 'hap': its numbers do "
                                 "not cover those classes"]
    wf1 = fake_result("wf1", 0.9, 1)
    supports = np.asarray(wf1.conditions["clean"]["block"]["confusion"]).sum(axis=1).tolist()
    chance = chance_level("weighted_f1", supports)
    wf1.conditions["clean"]["block"]["ci"] = {"weighted_f1": {"low": chance - 0.01, "high": chance + 0.2}}
    assert health.model_flags(wf1)["at_chance"] == ["clean"]


def test_chance_levels() -> None:
    assert chance_level("wa", [10, 10, 10, 10]) == pytest.approx(0.25)
    assert chance_level("ua", [5, 30, 10, 5]) == pytest.approx(0.25)
    assert chance_level("weighted_f1", [10, 10, 10, 10]) == pytest.approx(0.25)
    p = np.array([0.6, 0.2, 0.1, 0.1])  # uniform guessing: precision = prior, recall = 1/K
    f1 = 2 * p * 0.25 / (p + 0.25)
    assert chance_level("weighted_f1", [60, 20, 10, 10]) == pytest.approx(float((p * f1).sum()))
    assert chance_level("weighted_precision", [60, 20, 10, 10]) == pytest.approx(float((p * p).sum()))


def test_report_and_compare_mark_a_degenerate_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _evaluated_run(tmp_path, "good", 0.9, 1)
    bad = tmp_path / "bad"
    report.write_report(_one_class(fake_result("bad", 0.9, 2)), bad / "report")
    md = (bad / "report" / "report.md").read_text()
    assert md.split("\n")[2].startswith("> ⚠ **DEGENERATE MODEL**: predicts 'neu' for 100% of the blocks")
    assert "DEGENERATE" not in (good / "report" / "report.md").read_text()
    assert main(["compare", str(good), str(bad), "--bootstrap", "0"]) == 0
    printed = capsys.readouterr().out
    line = "⚠ bad: DEGENERATE MODEL: predicts 'neu' for 100% of the blocks (all test conditions)"
    assert line in printed and "good: " not in printed.split("Δ = arm")[1]
    out = tmp_path / "compare_good_vs_bad"
    assert f"> {line}" in (out / "compare.md").read_text()
    comp = json.loads((out / "compare.json").read_text())
    assert comp["flags"]["good"] == [] and comp["flags"]["bad"][0].startswith(line)
    assert comp["chance"] == [pytest.approx(chance_level("weighted_f1", report.supports(
        json.loads((good / "report" / "metrics.json").read_text())["conditions"][c]["block"])))
        for c in comp["conditions"]]


def test_compare_difference_figure(tmp_path: Path) -> None:
    a = _evaluated_run(tmp_path, "a", 0.3, 1)
    b = _evaluated_run(tmp_path, "b", 0.9, 2)
    result = compare.compare_runs([a, b], out=tmp_path / "cmp")
    out, md = result.out, result.markdown
    for figure in ("compare.png", "difference.png"):
        with Image.open(out / figure) as im:
            assert im.size[0] > 600 and im.size[1] > 400
        caption = md.split(f"]({figure})\n\n", 1)[1].split("\n")[0]
        assert caption.startswith(f"*Figure {1 + (figure == 'difference.png')}. ") and caption.endswith("*")
    points = compare.difference_points(result.table)["b"]
    comp = result.table
    assert [p["delta"] for p in points] == pytest.approx([vb - va for va, vb in zip(comp["values"]["a"],
                                                                                     comp["values"]["b"])])


def test_a_star_beside_a_flagged_model_says_so() -> None:
    """Two under-trained models can differ with an interval clear of 0: compare marks such a star."""
    comp = {"values": {"a": [0.5], "b": [0.7]}, "labels": ["clean"], "metric": "weighted_f1", "unit": "block",
            "deltas": {"a": [None], "b": [{"low": 0.1, "high": 0.3, "excludes_zero": True}]},
            "flags": {"a": [], "b": ["⚠ b: WARNING: never (under 1% of the blocks) predicts 'ang'"]}}
    assert "| clean | 0.500 | 0.700 | +0.200 [+0.10, +0.30] * ⚠ |" in compare.markdown_table(comp)
    assert any(n.startswith("`* ⚠`: the interval excludes 0, but one of the two models") for n in compare.notes(comp))
    comp["flags"]["b"] = []
    assert "+0.200 [+0.10, +0.30] * |" in compare.markdown_table(comp)
    assert not any("⚠" in n for n in compare.notes(comp))


def test_held_out_speakers_reach_the_report_and_the_model_card() -> None:
    """A speaker-independent build's test speakers (the manifest's ``split``) are named in the
    evaluation's protocol (metrics.json), its report line and an export's model card."""
    from serwild.config import load_config
    from serwild.data.manifest import DatasetInfo, Manifest
    from serwild.deploy import card
    from serwild.evaluate.evaluate import protocol
    from serwild.processes.checkpoint import Checkpoint

    manifest = Manifest(fingerprint="f", datasets={"ahsn": DatasetInfo(("a", "b"))}, conditions={"clean": None},
                        shards=(), config={"split": {"strategy": "speaker"}},
                        split={"strategy": "speaker", "datasets": {"ahsn": {"test_speakers": ["spk2", "spk7"],
                                                                             "train_speakers": ["spk1"]}}})
    ckpt = Checkpoint(model={}, epoch=3, config={}, classes=["a", "b"], dataset="ahsn", manifest_fingerprint="f",
                      arch="tiny", recipe={})
    p = protocol(ckpt, load_config(None), manifest)
    assert p["test_speakers"] == ["spk2", "spk7"] and p["split_strategy"] == "speaker"
    line = report.protocol_line(Report(run="x", classes=CLASSES, conditions={}, protocol=p))
    assert "split `speaker` (test speakers, unseen in training: spk2, spk7);" in line
    meta = {"training": {"conditions": ["clean"], "fold": None, "seed": 0, "recipe": {}, "budget": None},
            "build": {"location": "hf://datasets/me/x", "fingerprint": "abc", "corpus": "csv", "split": "speaker",
                      "snr_db": [15.0], "test_speakers": p["test_speakers"]}}
    assert "split `speaker` (tested on speakers unseen in training: spk2, spk7)" in "\n".join(
        card.training_section(meta))


def test_figure_spectrograms_draws_figure_2_from_any_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.evaluate.conftest import write_build

    build = write_build(tmp_path / "shards", {"clean": (None, [2]), "snr15": (15.0, [2])})
    out = tmp_path / "fig" / "spectrograms.png"
    assert main(["figure", "spectrograms", "--build", str(build), "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size[0] > 800 and im.size[1] > 400  # two panels side by side
    assert main(["figure", "spectrograms", "--build", str(build), "--dataset", "aesn"]) == 2
    assert "the build has ahsn" in capsys.readouterr().err


def test_a_six_class_confusion_figure_is_a_grid_a_column_can_hold(tmp_path: Path) -> None:
    """Four conditions of six classes: a 2 × 2 grid, not a 1 × 4 strip (3.7:1, unreadable at
    column width); four classes keep their single row."""
    from serwild.evaluate.figures import plot_confusions

    six = [f"c{i}" for i in range(6)]
    mats = {c: (np.eye(6, dtype=int) * 5 + 1).tolist() for c in ("clean", "15 dB", "20 dB", "40 dB")}
    with Image.open(plot_confusions(tmp_path / "six.png", mats, six)) as im:
        assert 0.8 < im.size[0] / im.size[1] < 1.6, im.size
    four = {c: (np.eye(4, dtype=int) * 5).tolist() for c in mats}
    with Image.open(plot_confusions(tmp_path / "four.png", four, CLASSES)) as im:
        assert im.size[0] / im.size[1] > 2.5, im.size
