"""serwild serve's endpoints in process (Starlette's TestClient), and the command itself on
127.0.0.1: the same labels as ``predict`` for a POSTed file and for a stream, the limits, the
token and loopback rules, and one-line refusals."""

from __future__ import annotations

import io
import json
import signal
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serwild.cli import main
from serwild.deploy.predict import Predictor

from .conftest import sound, start_serve

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from serwild.serve import Limits, ServeSettings, create_app  # noqa: E402

KINDS = [1, 2, 3, 0, 0, 2]  # six seconds, blocks of four different sounds
WS = "ws://127.0.0.1:8000/api/stream"  # TestClient names the host "testserver" unless told
TOKEN = "t0ken-for-the-tests-only"


@pytest.fixture(scope="module")
def model(model_dir: Path) -> Predictor:
    return Predictor(model_dir, "cpu")


def wav_bytes(y: np.ndarray, sr: int, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, y, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def client(model: Predictor, **settings: object) -> TestClient:
    return TestClient(create_app(model, ServeSettings(**settings)), base_url="http://127.0.0.1:8000")  # type: ignore[arg-type]


def test_post_gives_what_predict_gives_the_file(model: Predictor, tmp_path: Path) -> None:
    y = np.concatenate([sound(KINDS, 22050), 0.1 * sound([3], 22050)[:11025]])  # a tail under a block
    data = wav_bytes(y, 22050)
    (tmp_path / "rec.wav").write_bytes(data)
    want = model.predict_file(tmp_path / "rec.wav").to_dict()
    with client(model) as c:
        health = c.get("/api/health").json()
        r = c.post("/api/predict", content=data)
    assert health["classes"] == model.classes and health["arch"] == "tiny" and health["token_required"] is False
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["file"] == "<upload>" and got["blocks"] == want["blocks"] and got["tail_s"] == want["tail_s"] == 0.5
    assert got["label"] == want["label"] and len({b["label"] for b in got["blocks"]}) > 1


def test_stream_gives_predicts_labels_block_for_block(model: Predictor, tmp_path: Path) -> None:
    """int16 stereo at 22.05 kHz in chunks of an odd size, a silent second inside: one JSON per
    block, in order, with predict's labels for the same samples (the 16-bit file's)."""
    sr = 22050
    y = sound(KINDS, sr)
    y[2 * sr:3 * sr] = 0.0
    stereo = np.stack([y, 0.5 * y], axis=1)
    (tmp_path / "rec.wav").write_bytes(wav_bytes(stereo, sr))
    want = model.predict_file(tmp_path / "rec.wav")
    pcm, _ = sf.read(tmp_path / "rec.wav", dtype="int16")
    raw = pcm.astype("<i2").tobytes()
    with client(model) as c, c.websocket_connect(f"{WS}") as ws:
        ws.send_text(json.dumps({"sample_rate": sr, "format": "s16le", "channels": 2}))
        ready = ws.receive_json()
        step = 4 * 1234  # not a divisor of a block
        for i in range(0, len(raw), step):
            ws.send_bytes(raw[i:i + step])
        ws.send_text(json.dumps({"type": "end"}))
        msgs = []
        while (m := ws.receive_json())["type"] == "block":
            msgs.append(m)
    assert ready["type"] == "ready" and ready["classes"] == model.classes and m["type"] == "end"
    assert [m["block"] for m in msgs] == list(range(len(KINDS)))
    assert [m["start_s"] for m in msgs if m["silent"]] == [2.0] and want.skipped_blocks == [2]
    assert [m["label"] for m in msgs if not m["silent"]] == [b["label"] for b in want.blocks]
    assert [m["probs"] for m in msgs if not m["silent"]] == [b["probs"] for b in want.blocks]


def test_a_bad_stream_is_told_why_in_one_message(model: Predictor) -> None:
    with client(model, limits=Limits(max_seconds=1.5)) as c:
        for first, why in (("hello", "the first message must be JSON"),
                           (json.dumps({"sample_rate": 100}), "sample rate"),
                           (json.dumps({"sample_rate": 16000, "format": "mp3"}), "format must be one of"),
                           (json.dumps({"sample_rate": 16000, "hop_s": 2.0}), "hop_s must be in")):
            with c.websocket_connect(f"{WS}") as ws:
                ws.send_text(first)
                m = ws.receive_json()
                if m["type"] == "ready":  # hop_s is the scorer's to check: it says so at the first audio
                    ws.send_bytes(np.zeros(160, "<f4").tobytes())
                    m = ws.receive_json()
                assert m["type"] == "error" and why in m["error"], (first, m)
        with c.websocket_connect(f"{WS}") as ws:
            ws.send_text(json.dumps({"sample_rate": 16000, "format": "s16le"}))
            ws.receive_json()
            ws.send_bytes(b"\x00\x01\x02")  # half a sample
            assert "not whole frames" in ws.receive_json()["error"]
        with c.websocket_connect(f"{WS}") as ws:
            ws.send_text(json.dumps({"sample_rate": 16000}))
            ws.receive_json()
            for _ in range(2):
                ws.send_bytes(np.full(16000, 0.1, "<f4").tobytes())
            msgs = [ws.receive_json() for _ in range(2)]
            assert msgs[0]["type"] == "block" and "passed 1.5 s" in msgs[1]["error"]


def test_limits_on_bodies_and_connections(model: Predictor) -> None:
    good = wav_bytes(sound([0, 1, 2], 16000), 16000)
    with client(model, limits=Limits(max_body_bytes=len(good) - 1, max_connections=1, max_seconds=2.0)) as c:
        assert c.post("/api/predict", content=good).status_code == 413
        assert c.post("/api/predict", content=good[:70000]).json()["error"].startswith("the recording is 2 s long")
        assert c.post("/api/predict", content=b"").status_code == 400
        bad = c.post("/api/predict", content=b"not audio at all")
        assert bad.status_code == 422 and bad.json()["error"].startswith("not readable audio")
        with c.websocket_connect(f"{WS}") as held:  # the one slot
            held.send_text(json.dumps({"sample_rate": 16000}))
            held.receive_json()
            busy = c.post("/api/predict", content=good[:30000])
            assert busy.status_code == 503 and busy.json()["error"].startswith("busy")
            with c.websocket_connect(f"{WS}") as ws:
                assert ws.receive_json()["error"].startswith("busy")
        assert c.post("/api/predict", content=good[:30000]).status_code == 200  # the slot is free again


def test_loopback_rules_and_the_token(model: Predictor) -> None:
    with client(model) as c:
        assert c.get("/").status_code == 200 and "data-label" in c.get("/").text
        assert c.get("/api/health", headers={"Host": "evil.example"}).status_code == 403  # DNS rebinding
        assert c.get("/api/health", headers={"Origin": "http://127.0.0.1:8000"}).status_code == 200
        with pytest.raises(WebSocketDisconnect), c.websocket_connect(f"{WS}",
                                                                       headers={"Origin": "https://evil.example"}):
            pass  # another site's page may not open a stream to this machine
    with client(model, token=TOKEN) as c:
        assert c.get("/").status_code == 401 and c.get("/api/health?token=nope").status_code == 401
        assert c.get(f"/?token={TOKEN}").status_code == 200
        assert c.get("/api/health", headers={"Authorization": f"Bearer {TOKEN}", "Host": "ser.example"}).json()[
            "token_required"] is True
        with pytest.raises(WebSocketDisconnect), c.websocket_connect(f"{WS}"):
            pass
        with c.websocket_connect(f"{WS}?token={TOKEN}") as ws:
            ws.send_text(json.dumps({"sample_rate": 16000}))
            assert ws.receive_json()["type"] == "ready"


def test_cli_refuses_an_open_host_without_a_token(model_dir: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERWILD_TOKEN", raising=False)
    for extra, said in ((["--host", "0.0.0.0"], "lets other machines connect: give --token"),
                        (["--host", "0.0.0.0", "--token", "short"], "use at least 16"),
                        (["--max-connections", "0"], "--max-connections")):
        assert main(["serve", "--model", str(model_dir), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("serwild serve: error: ") and said in err[0], err


@pytest.mark.slow
def test_serve_answers_on_loopback_and_stops_with_one_line(model_dir: Path) -> None:
    """The real command: --port 0 says its URL, a POST is scored over HTTP, SIGTERM ends it (143)."""
    proc, base = start_serve(model_dir)
    try:
        with urllib.request.urlopen(base + "api/health", timeout=30) as r:
            assert json.load(r)["arch"] == "tiny"
        data = wav_bytes(sound([0, 1], 16000), 16000)
        with urllib.request.urlopen(urllib.request.Request(base + "api/predict", data=data), timeout=60) as r:
            assert len(json.load(r)["blocks"]) == 2
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(base + "api/predict", data=b"x" * 10), timeout=60)
        assert refused.value.code == 422
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "serwild serve: stopped by SIGTERM", err
