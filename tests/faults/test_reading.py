"""What a reader takes from files it did not write (the hardening pass, reading side): real files, real processes.

A checkpoint whose recorded build is a ``pipe:`` command (nothing may run), weights that are
NaN, a manifest that never ends (over loopback HTTP), a manifest missing ``fingerprint`` or
holding the wrong types, and shards or manifests that are symlinks out of their build. Each
is one line, a non-zero exit status and no traceback; nothing runs, nothing outside the build
is read, no process is left behind.
"""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import soundfile as sf
import torch

from serwild.builder.manifest import fingerprint
from serwild.cli import main
from serwild.data.fetch import MAX_METADATA_BYTES, RemoteError
from serwild.data.manifest import Manifest
from serwild.data.remote import open_location
from serwild.deploy import predict as predict_mod
from serwild.processes.checkpoint import Checkpoint, save_checkpoint
from tests.builder.conftest import tone
from tests.evaluate.conftest import write_build, write_checkpoint
from tests.faults import procs
from tests.faults.procs import SERWILD, one_line

CAP = f"{MAX_METADATA_BYTES >> 20} MiB"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(build, checkpoint) for the module; tests copy before damaging anything."""
    root = tmp_path_factory.mktemp("reading")
    build = write_build(root / "shards", {"clean": (None, [3]), "snr15": (15.0, [2])})
    return build, write_checkpoint(root / "run" / "best.pt", build)


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wav") / "rec.wav"
    sf.write(path, tone(2.0, 200.0), 16000)
    return path


def _variant(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of checkpoint ``src`` with ``edit`` applied to its dict."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    edit(ckpt)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dst, Checkpoint.from_dict(ckpt))
    return dst


def _cli(capsys: pytest.CaptureFixture[str], argv: list[str], expect_rc: int, *needles: str) -> str:
    rc = main(argv)
    return one_line(capsys.readouterr().err, rc, expect_rc, *needles)


def _edit_manifest(build: Path, edit: Callable[[dict], None]) -> None:
    m = json.loads((build / "manifest.json").read_text())
    edit(m)
    (build / "manifest.json").write_text(json.dumps(m))


# ----------------------------------------------------------------------------- 1. commands from files


def test_a_checkpoints_recorded_pipe_command_never_runs(built: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    build, ckpt = built
    pwned = tmp_path / "PWNED"
    hostile = f"pipe:touch {pwned}; cat {build}/{{path}}"
    shared = _variant(ckpt, tmp_path / "shared" / "best.pt", lambda c: c.update(shards=hostile))
    line = _cli(capsys, ["evaluate", "--checkpoint", str(shared), "--out", str(tmp_path / "report"),
                         "eval.device=cpu", "eval.num_workers=0"], 2, "serwild evaluate: error:", "pipe:",
                "serwild reads no pipe: command")
    assert not pwned.exists(), line
    assert not (tmp_path / "report").exists()
    # The library refuses it too, whoever calls it.
    with pytest.raises(RemoteError, match="pipe:"):
        open_location(hostile)
    assert not pwned.exists()


# ----------------------------------------------------------------------------- 5. NaN weights


def test_nan_weights_are_refused_by_evaluate_and_predict(built: tuple[Path, Path], wav: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    build, ckpt = built

    def poison(c: dict) -> None:
        c["model"]["classifier.4.weight"][3, 7] = float("nan")

    bad = _variant(ckpt, tmp_path / "nan" / "best.pt", poison)
    for argv in (["evaluate", "--checkpoint", str(bad), "--shards", str(build), "--out", str(tmp_path / "r"),
                  "eval.device=cpu", "eval.num_workers=0"],
                 ["predict", "--checkpoint", str(bad), "--json", str(wav), "eval.device=cpu"]):
        _cli(capsys, argv, 2, str(bad), "classifier.4.weight", "not finite")
    assert not (tmp_path / "r").exists()


def test_predict_json_never_holds_nan(built: tuple[Path, Path], wav: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Finite weights whose outputs overflow (fc7's units at >= 1, fc8 at 1e38): the file fails, the
    JSON stays JSON."""
    _, ckpt = built
    real = predict_mod._model

    def overflowing(loaded: object) -> torch.nn.Module:
        model = real(loaded)
        with torch.no_grad():
            model.classifier[4].bias.fill_(1.0)  # after ReLU every fc7 unit is >= 1…
            model.classifier[6].weight.fill_(1e38)  # …so each logit sums 64+ terms of 1e38: inf
        return model

    monkeypatch.setattr(predict_mod, "_model", overflowing)
    rc = main(["predict", "--checkpoint", str(ckpt), "--json", str(wav), "eval.device=cpu"])
    out = capsys.readouterr()

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} in predict --json output")

    data = json.loads(out.out, parse_constant=no_constants)
    (only,) = data["files"]
    assert rc == 1 and only["probs"] is None and "not finite" in only["error"], (rc, only)
    one_line(out.err, rc, 1, str(wav), "not finite")


# ----------------------------------------------------------------------------- 6. endless metadata


class _Endless(BaseHTTPRequestHandler):
    """Answers every GET with a body that never ends (no Content-Length), until the client
    goes away or the server stops."""

    protocol_version = "HTTP/1.0"
    stopping: threading.Event

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        chunk = b"[" * (1 << 16)
        with contextlib.suppress(OSError):
            while not self.stopping.is_set():
                self.wfile.write(chunk)


@contextlib.contextmanager
def endless_server(max_lifetime_s: float) -> Iterator[str]:
    """A loopback server streaming endless bodies; stops on leaving, or by itself after ``max_lifetime_s``."""
    stopping = threading.Event()
    handler = type("Handler", (_Endless,), {"stopping": stopping})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    timer = threading.Timer(max_lifetime_s, stopping.set)
    timer.daemon = True
    timer.start()
    try:
        host, port = httpd.server_address[:2]
        yield f"http://{host}:{port}/build/"
    finally:
        timer.cancel()
        stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _limit_memory() -> None:
    """The child may not take more than 1 GiB: were the cap gone, it fails instead of the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_an_endless_manifest_is_cut_at_the_cap() -> None:
    with endless_server(max_lifetime_s=60) as url:
        proc = subprocess.run([*SERWILD, "verify", url], capture_output=True, text=True, env=procs.env(),
                              timeout=120, cwd=procs.REPO, preexec_fn=_limit_memory)
    one_line(proc.stderr, proc.returncode, 2, "serwild verify: error:", url + "manifest.json", CAP)


# ----------------------------------------------------------------------------- 9. manifest structure


@pytest.mark.parametrize(("edit", "needles"), [
    (lambda m: m.pop("fingerprint"), ("'fingerprint'",)),
    (lambda m: m.update(fingerprint=12), ("'fingerprint'",)),
    (lambda m: m.update(config="split: utterance"), ("'config'",)),
    (lambda m: m["config"].update(split=["utterance"]), ("config.split",)),
    (lambda m: m["config"]["split"].update(strategy=3), ("config.split.strategy",)),
    (lambda m: m.update(totals={"samples": "5"}), ("totals.samples",)),
    (lambda m: m["datasets"]["ahsn"]["classes"].append("ang"), ("datasets.ahsn.classes", "'ang'")),
    (lambda m: m["datasets"]["ahsn"].update(empty_classes=["hap"]), ("datasets.ahsn.empty_classes",)),
    (lambda m: m.update(extra_columns="speaker"), ("'extra_columns'",)),
    (lambda m: m.update(image=[257, 259]), ("'image'",)),
    (lambda m: m["shards"][0].update(class_counts={"ang": -1}), ("shard record 0", "'class_counts'")),
], ids=["no-fingerprint", "fingerprint-int", "config-str", "split-list", "strategy-int", "totals-str",
        "duplicate-class", "empty-classes-list", "extra-columns-str", "image-list", "class-counts-negative"])
def test_verify_refuses_a_manifest_field_readers_rely_on(built: tuple[Path, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str], edit, needles) -> None:
    build = shutil.copytree(built[0], tmp_path / "shards")
    _edit_manifest(build, edit)
    _cli(capsys, ["verify", str(build)], 2, "serwild verify: error:", f"{build}/manifest.json", *needles)


def test_evaluate_refuses_a_manifest_without_fingerprint_up_front(built: tuple[Path, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    build = shutil.copytree(built[0], tmp_path / "shards")
    _edit_manifest(build, lambda m: m.pop("fingerprint"))
    _cli(capsys, ["evaluate", "--checkpoint", str(built[1]), "--shards", str(build), "--out", str(tmp_path / "r"),
                  "eval.device=cpu"], 2, "serwild evaluate: error:", f"{build}/manifest.json", "'fingerprint'")
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- 4. a record that lies


def test_a_manifest_that_lists_a_shard_under_another_condition_is_refused(built: tuple[Path, Path], tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The records of two shards swapped, each with its own path, count and sha256: every size,
    hash and fingerprint check passes, but the samples' own JSON names the other condition."""
    build = shutil.copytree(built[0], tmp_path / "shards")

    def swap(m: dict) -> None:
        a, b = m["shards"][0], m["shards"][-1]
        assert a["condition"] != b["condition"]
        own = ("path", "count", "class_counts", "bytes", "sha256")
        for k in own:
            a[k], b[k] = b[k], a[k]

    _edit_manifest(build, swap)
    assert main(["verify", str(build)]) == 0  # nothing a verify can see
    capsys.readouterr()
    _cli(capsys, ["evaluate", "--checkpoint", str(built[1]), "--shards", str(build), "--out", str(tmp_path / "r"),
                  "eval.device=cpu", "eval.num_workers=0", "eval.bootstrap=0"], 2, "serwild evaluate: error:",
         "the manifest lists its shard as")
    assert not (tmp_path / "r").exists()


def test_a_manifest_that_renames_the_classes_under_the_data_is_refused(built: tuple[Path, Path], tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Two class names swapped in the manifest, and in a checkpoint trained under it: sizes,
    hashes, fingerprint and the checkpoint's classes all agree, but every angry block would be
    scored as happy. The samples' own labels disagree, and the reader says so."""
    build = shutil.copytree(built[0], tmp_path / "shards")
    classes = json.loads((build / "manifest.json").read_text())["datasets"]["ahsn"]["classes"]
    swapped = [classes[1], classes[0], *classes[2:]]

    def rename(m: dict) -> None:  # a careful forger: the fingerprint is made anew
        m["datasets"]["ahsn"]["classes"] = swapped
        typed = Manifest.from_dict(m, "manifest.json")
        m["fingerprint"] = fingerprint(list(typed.shards), typed.datasets)

    _edit_manifest(build, rename)
    print_ = json.loads((build / "manifest.json").read_text())["fingerprint"]
    ckpt = _variant(built[1], tmp_path / "run" / "best.pt",
                    lambda c: c.update(classes=swapped, manifest_fingerprint=print_))
    assert main(["verify", str(build)]) == 0  # nothing a verify can see
    capsys.readouterr()
    _cli(capsys, ["evaluate", "--checkpoint", str(ckpt), "--shards", str(build), "--out", str(tmp_path / "r"),
                  "eval.device=cpu", "eval.num_workers=0", "eval.bootstrap=0"], 2, "serwild evaluate: error:",
         f"where the manifest names {swapped[0]!r}", "the manifest does not describe this build")
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- 18. symlinks out of a build


def test_a_shard_or_manifest_linked_out_of_the_build_is_refused(built: tuple[Path, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    build = shutil.copytree(built[0], tmp_path / "shards")
    rel = "ahsn/test/clean-000000.tar"
    outside = tmp_path / "outside.tar"  # the same bytes: only where it lives is wrong
    shutil.copyfile(build / rel, outside)
    # A link that stays inside the build is fine.
    (build / rel).unlink()
    shutil.copyfile(outside, build / "ahsn" / "kept.tar.bak")
    (build / rel).symlink_to(build / "ahsn" / "kept.tar.bak")
    assert main(["verify", str(build)]) == 0
    capsys.readouterr()
    (build / rel).unlink()
    (build / rel).symlink_to(outside)
    for argv in (["verify", str(build)], ["verify", "--quick", str(build)], ["verify", f"file://{build}"],
                 ["evaluate", "--checkpoint", str(built[1]), "--shards", str(build), "--out", str(tmp_path / "r"),
                  "eval.device=cpu"]):
        _cli(capsys, argv, 2, rel, str(outside), "outside the build")
    assert not (tmp_path / "r").exists()
    (build / rel).unlink()
    shutil.copyfile(outside, build / rel)
    manifest = tmp_path / "manifest.json"
    (build / "manifest.json").rename(manifest)
    (build / "manifest.json").symlink_to(manifest)
    _cli(capsys, ["verify", str(build)], 2, "manifest.json", str(manifest), "outside the build")


def test_a_server_that_does_not_answer_is_exit_1_not_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Retries spent on a refused connection: one line naming the URL and the attempts, and exit
    status 1 (nothing the user typed is wrong: not a usage error's 2)."""
    import socket

    with socket.socket() as s:  # a port nothing listens on once the socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = ["remote.timeout_s=2", "remote.retries=1", "remote.backoff_s=0.05"]
    rc = main(["verify", f"http://127.0.0.1:{port}/build/", *opts])
    one_line(capsys.readouterr().err, rc, 1, f"http://127.0.0.1:{port}/build/manifest.json",
             "gave up after 2 attempts")
