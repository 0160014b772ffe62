"""`serwild reproduce` at smoke size, as a user runs it: a real process, SIGKILLed (its whole
process group) once the first cross-validation summary exists, then run again (in this
process: what it says is what is checked): the finished runs are reused untouched, the rest
is done, and every number of the final tables is traced to the metrics.json of the run
folder it came from.

One dataset (AHSN) and the tiny model; the second dataset goes through the same loop. The
build is the session's finished build of this config (tests/pipelines/conftest.py), which
both invocations reuse: building is ``serwild build``'s code, tested in tests/builder."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serwild.cli import main as cli
from serwild.evaluate import health, report
from serwild.evaluate.document import Report
from serwild.metrics import BY_PATH
from tests.faults.procs import lines_until
from tests.pipelines.conftest import ARCH, PROTOCOL, PROTOCOL_TINY, corpus_args

pytestmark = pytest.mark.slow
CELL = re.compile(r"^(\d\.\d{3}) \[(\d\.\d{3}), (\d\.\d{3})\]$")
DELTA = re.compile(r"^([+-]\d\.\d{3}) \[([+-]\d\.\d{2}), ([+-]\d\.\d{2})\]( \*)?$")


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (read from /proc; nothing is signalled here)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(x) for x in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _snapshot(*folders: Path) -> dict[str, int]:
    return {str(f): f.stat().st_mtime_ns for d in folders for f in sorted(d.iterdir()) if f.is_file()}


def _table(md: str, heading: str) -> list[list[str]]:
    """The first markdown table after ``heading``: rows of cells (header included)."""
    lines = md.split(heading, 1)[1].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| "))
    rows = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        if not ln.startswith("|---"):
            rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return rows


def test_reproduce_killed_and_resumed(pipeline_build: Path, tiny_corpus: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "protocol-tiny.yaml"
    shutil.copy(PROTOCOL_TINY, config)
    runs, shards = tmp_path / "runs", pipeline_build
    cmd = [sys.executable, "-m", "serwild", "reproduce", "--config", str(config), "--serial",
           *corpus_args(tiny_corpus), f"out={shards}", f"train.run_dir={runs}", *PROTOCOL, *ARCH]
    exp1 = [runs / f"protocol-ahsn-exp1-fold{k}" for k in (0, 1)]
    cv1 = runs / "protocol-ahsn-exp1-cv"

    # 1. first run, killed (SIGKILL to its process group) once the first CV summary exists
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 400  # a hang fails the test instead of stalling the suite
            while not ((cv1 / "cv.json").is_file() and (cv1 / "cv.md").is_file()):
                assert proc.poll() is None, f"reproduce ended early:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no CV summary after 400 s"
                time.sleep(0.2)
            below = _descendants(proc.pid)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # torchrun (its own process group) is told by the kernel that its parent died; wait for
    # every process the killed run started, so none of them still writes into the run folders
    deadline = time.monotonic() + 60
    while any(_alive(p) for p in below) and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in below:
        if _alive(p):
            os.kill(p, signal.SIGKILL)
    summary = json.loads((cv1 / "cv.json").read_text())
    finished = _snapshot(*exp1) | {str(cv1 / f): (cv1 / f).stat().st_mtime_ns for f in ("cv.json", "cv.md", "best.pt")}
    assert any(p.endswith("last.pt") for p in finished) and not (runs / "reproduce" / "report.md").exists()
    first_log = (tmp_path / "first.log").read_text()
    assert "[1/10] build" in first_log and "[4/10] ahsn exp1 (clean): CV summary" in first_log

    # 2. the same command again, in-process (what it says and its status are what is checked):
    # finished runs are reused untouched, the rest is done
    capsys.readouterr()
    rc = cli(cmd[3:])
    err = capsys.readouterr().err
    assert rc == 0, err[-3000:]
    for k in (0, 1):
        assert re.search(rf"\[{k + 2}/10\] ahsn exp1 \(clean\): train fold {k}\b.*: reused", err)
    assert re.search(r"\[1/10\] build .*: reused", err)
    assert re.search(r"\[4/10\] ahsn exp1 \(clean\): CV summary .*: reused", err)
    assert "[10/10] report" in err
    assert {p: os.stat(p).st_mtime_ns for p in finished} == finished, "a finished run was rewritten"
    assert json.loads((cv1 / "cv.json").read_text()) == summary

    # 3. the report: the paper's Table 5/6 shape, every number from a run's metrics.json
    out = runs / "reproduce"
    md = (out / "report.md").read_text()
    data = json.loads((out / "reproduce.json").read_text())
    manifest = json.loads((shards / "manifest.json").read_text())
    rows = _table(md, "## AHSN")
    cols = [f"Exp {n} {t}" for n in (1, 2) for t in ("WA", "W-P", "W-R", "W-F1")]
    assert rows[0] == ["Test condition", *cols]
    assert [r[0] for r in rows[1:]] == ["clean", "15 dB", "20 dB", "40 dB"]
    conds = ["clean", "snr15", "snr20", "snr40"]
    keys = ["wa", "weighted.precision", "weighted.recall", "weighted.f1"]
    metrics = {}
    for n in (1, 2):
        entry = data["datasets"]["ahsn"][f"exp{n}"]
        cv_dir = runs / f"protocol-ahsn-exp{n}-cv"
        assert Path(entry["metrics"]) == cv_dir / "report" / "metrics.json" and entry["run"] == str(cv_dir)
        m = json.loads(Path(entry["metrics"]).read_text())
        cv = json.loads((cv_dir / "cv.json").read_text())
        # the evaluated model is the best fold's, trained on this build
        assert m["protocol"]["fold"] == cv["best_fold"] == entry["best_fold"]
        assert m["manifest_fingerprint"] == manifest["fingerprint"]
        assert m["protocol"]["train_conditions"] == (["clean"] if n == 1 else conds)
        metrics[n] = m
        assert f"| {n} ({'clean' if n == 1 else 'clean + noisy'}) | 2 | {cv['best_fold']} | " \
               f"{cv['mean_std']['wa']['mean']:.3f} ± {cv['mean_std']['wa']['std']:.3f}" in md
    for row, cond in zip(rows[1:], conds):
        for i, cell in enumerate(row[1:]):
            n, key = 1 + i // 4, keys[i % 4]
            m = metrics[n]["conditions"][cond]["block"]
            ci = m["ci"][BY_PATH[key].name]
            match = CELL.match(cell)
            assert match, cell
            assert match.groups() == (f"{report.metric(m, key):.3f}", f"{ci['low']:.3f}", f"{ci['high']:.3f}")
    # Figure 4's table: exp2 − exp1 with the paired interval, from the same metrics.json files
    comp = json.loads(Path(data["datasets"]["ahsn"]["compare"]).read_text())
    fig = _table(md, "Figure 4:")
    assert [r[0] for r in fig[1:]] == ["clean", "15 dB", "20 dB", "40 dB"]
    for row, cond, d in zip(fig[1:], conds, comp["deltas"]["exp2 (clean + noisy)"]):
        v1 = metrics[1]["conditions"][cond]["block"]["weighted"]["f1"]
        v2 = metrics[2]["conditions"][cond]["block"]["weighted"]["f1"]
        assert row[1:3] == [f"{v1:.3f}", f"{v2:.3f}"]
        match = DELTA.match(row[3])
        assert match, row[3]
        assert match.groups()[:3] == (f"{v2 - v1:+.3f}", f"{d['low']:+.2f}", f"{d['high']:+.2f}")
        assert bool(match.group(4)) == d["excludes_zero"]
    assert (out / "compare-ahsn" / "compare.png").stat().st_size > 1000
    assert (out / "compare-ahsn" / "difference.png").stat().st_size > 1000
    assert "](compare-ahsn/difference.png)\n\n*Figure 4 (AHSN)." in md
    # what produced the numbers: N per condition, each model's budget, the software
    n = {c: metrics[1]["conditions"][c]["block"]["n"] for c in conds}
    assert f"**Test set (N per condition):** clean {n['clean']} blocks / " in md
    for k in (1, 2):
        assert f"- Exp {k}: 1 of 1 epochs, 32 samples per epoch, global batch 8 = 1 rank(s) × 8 per rank" in md
        assert data["datasets"]["ahsn"][f"exp{k}"]["n"] == n
    assert "**Software:** serwild " in md and "(git " in md and ", torch " in md
    # models that learnt nothing are marked, in the report and on the terminal
    for k in (1, 2):
        flags = health.flag_lines(f"AHSN exp{k}", Report.from_dict(metrics[k]))
        assert data["flags"][f"ahsn exp{k}"] == flags
        assert all(f"> {line}" in md and f"serwild reproduce: {line}" in err for line in flags)
    assert any(data["flags"].values()), "one epoch of 32 samples from scratch: expected a chance-level model"
    assert "Brackets: 95% percentile interval from a cluster bootstrap" in md
    assert "split `block`, 2-fold cross-validation" in md
    # every stage's wall time, the reused ones with the time they took in the killed run
    stages = data["stages"]
    assert len(stages) == 9 and stages["protocol-ahsn-exp1-fold0"]["reused"] is True
    assert all(s["seconds"] is not None for s in stages.values())
    assert "## Wall time" in md and "| reused |" in md and "| ran |" in md


def test_reproduce_reads_an_installed_config_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--config protocol-tiny`` is the installed config, as for every other command (it was
    "not found" unless the path existed from the current folder); an unknown name lists them."""
    rc = cli(["reproduce", "--config", "protocol-tiny", "--serial", "corpus.kind=csv",
              f"corpus.root={tmp_path / 'none.csv'}", f"out={tmp_path / 'shards'}", f"train.run_dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "CSV list not found" in err[-1], err  # past the config: its corpus is what is missing
    assert cli(["reproduce", "--config", "no-such-protocol"]) == 2
    assert "installed: " in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_to_reproduce_is_143_and_one_line(pipeline_build: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    """A scheduler's SIGTERM while a fold trains: passed to torchrun, then the status a shell
    expects of a stop (143, not 2, "a usage error") and one line saying how to go on."""
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "serwild", "reproduce", "--config", str(PROTOCOL_TINY), "--serial",
           *corpus_args(tiny_corpus), f"out={pipeline_build}", f"train.run_dir={runs}", *PROTOCOL, *ARCH,
           "train.samples_per_epoch=20000"]  # a long first epoch: the signal lands in it
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        err, reader = lines_until(proc, "steps/epoch", 300)  # a rank's start-up line: training has begun
        assert proc.poll() is None, "".join(err)[-3000:]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        reader.join(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = "".join(err)
    said = [ln for ln in text.strip().splitlines() if ln.startswith("serwild ")]
    assert proc.returncode == 143, text[-3000:]
    assert said[-1] == "serwild reproduce: stopped by SIGTERM; run the same command again to resume", text[-3000:]
    assert "Traceback" not in text
