"""`serwild export` and `Predictor.from_pretrained`: a run folder becomes a small folder that a
new process loads, with no run folder left, and scores a WAV, a numpy array and a 0.6 s
recording exactly as `serwild predict --checkpoint` scores them on the original checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from serwild.cli import main
from serwild.deploy.export import export_run
from serwild.evaluate.config import EvalConfig
from serwild.evaluate.evaluate import evaluate_checkpoint
from serwild.processes.checkpoint import load_checkpoint, save_checkpoint
from serwild.text import portable_json
from tests.evaluate.conftest import CLASSES, write_checkpoint

from .test_predict import speechlike

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(build_and_checkpoint: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as serwild train leaves it (best.pt, metrics.jsonl), evaluated. Its last layer
    is scaled up so that blocks get clearly different probabilities (a random model's are all
    about 1/K, which would make any two outputs look alike)."""
    build, _ = build_and_checkpoint
    run = tmp_path_factory.mktemp("exportfix") / "runs" / "demo-x"
    ckpt_path = write_checkpoint(run / "best.pt", build, seed=3)
    ckpt = load_checkpoint(ckpt_path)
    ckpt.model["classifier.6.weight"] *= 400.0
    save_checkpoint(ckpt_path, ckpt)
    lines = [{"epoch": e, "steps": 4, "samples": 32, "world_size": 1, "train_loss": 1.0, "val": None} for e in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    evaluate_checkpoint(ckpt_path, settings=EvalConfig(batch_size=8, num_workers=0, device="cpu", bootstrap=100))
    return run


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("exportwavs")
    files = {"speech": d / "speech.wav", "stereo": d / "stereo.wav", "no": d / "no.wav"}
    sf.write(files["speech"], speechlike(2.5, 16000, 170.0, 4), 16000, subtype="PCM_16")
    both = np.stack([speechlike(1.7, 22050, 210.0, 5), speechlike(1.7, 22050, 140.0, 6)], axis=1)
    sf.write(files["stereo"], both, 22050)
    sf.write(files["no"], speechlike(0.6, 16000, 250.0, 7), 16000)  # "No!": shorter than one block
    return files


def _scored(entry: dict) -> dict:
    """What a prediction says, without the name it was given under."""
    return {k: v for k, v in entry.items() if k != "file"}


def test_export_loads_in_a_new_process_and_scores_like_the_checkpoint(
        run: Path, recordings: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 1. the reference: serwild predict on the original checkpoint
    paths = [str(recordings[k]) for k in ("speech", "stereo", "no")]
    assert main(["predict", "--checkpoint", str(run / "best.pt"), *paths, "--json"]) == 0
    reference = json.loads(capsys.readouterr().out)
    assert reference["files"][2]["padded_s"] == pytest.approx(0.4) and len(reference["files"][2]["blocks"]) == 1
    assert max(max(b["probs"].values()) for f in reference["files"] for b in f["blocks"]) > 0.5  # not all 1/K

    # 2. export, then take the run folder (checkpoint, report, history) away
    work = tmp_path / "elsewhere"
    shutil.copytree(run, work / "runs" / "demo-x")
    out = export_run(work / "runs" / "demo-x", tmp_path / "share" / "demo-x")
    shutil.rmtree(work)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size < 250e6, f"export is {size / 1e6:.0f} MB"
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "README.md",
                                               "training_config.yaml", "evaluation"}

    # 3. a new process: from_pretrained, then a file and the same audio as an array
    script = textwrap.dedent(f"""
        import json, sys
        import soundfile as sf
        from serwild.deploy import Predictor
        model = Predictor.from_pretrained({str(out)!r}, device="cpu")
        out = []
        for path in sys.argv[1:]:
            samples, sr = sf.read(path, dtype="float32")
            out.append([model.predict_file(path).to_dict(), model.predict_array(samples, sr).to_dict()])
        print(json.dumps({{"classes": model.classes, "results": out}}))
    """)
    done = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loading" in done.stderr and "ready in" in done.stderr and "4 classes" in done.stderr
    got = json.loads(done.stdout)
    assert got["classes"] == reference["classes"] == CLASSES
    for want, (from_file, from_array) in zip(reference["files"], got["results"]):
        assert from_file["file"] == want["file"] and from_array["file"] == "<array>"
        assert _scored(from_file) == _scored(want)
        assert _scored(from_array) == _scored(want)


def test_export_folder_contents_and_card(run: Path, tmp_path: Path) -> None:
    out = export_run(run, tmp_path / "demo-x", license_id="cc-by-4.0", dataset_id="me/serwild-demo")
    meta = json.loads((out / "config.json").read_text())
    ckpt = load_checkpoint(run / "best.pt")
    assert meta["classes"] == CLASSES and meta["id2label"]["2"] == "sad" and meta["label2id"]["neu"] == 3
    assert meta["audio"]["sample_rate"] == 16000 and meta["image"]["size"] == 256
    assert meta["build"]["fingerprint"] == ckpt.manifest_fingerprint
    budget = meta["training"]["budget"]
    assert (budget["epochs_done"], budget["samples_per_epoch"], budget["global_batch"], budget["per_rank_batch"],
            budget["world_size"], budget["optimizer_steps"]) == (2, 32, 8, 8, 1, 8)
    assert meta["versions"]["exported_with"]["torch"] == torch.__version__
    report = json.loads((run / "report" / "metrics.json").read_text())
    assert json.loads((out / "evaluation" / "metrics.json").read_text()) == portable_json(report, [])  # the same, but
    # the build and checkpoint by their last part (test_an_export_names_no_folder_of_this_machine)
    assert meta["evaluation"]["flags"]["degenerate"] == report["flags"]["degenerate"]
    assert (out / "training_config.yaml").read_text() == yaml.safe_dump(portable_json(ckpt.config, []),
                                                                        sort_keys=False)
    from safetensors.torch import load_file

    weights = load_file(out / "model.safetensors")
    assert weights.keys() == ckpt.model.keys()
    assert all(torch.equal(weights[k], ckpt.model[k]) for k in weights)
    # the card: the Hub's format, read back with the Hub's own parser
    hub = pytest.importorskip("huggingface_hub")
    card = hub.ModelCard.load(out / "README.md")
    assert card.data.license == "cc-by-4.0" and card.data.datasets == ["me/serwild-demo"]
    assert card.data.pipeline_tag == "audio-classification" and card.data.library_name == "serwild"
    results = card.data.eval_results
    conds = sorted(report["conditions"])
    assert sorted({r.dataset_split for r in results}) == sorted(f"test_{c}" for c in conds)
    for r in results:
        cond = report["conditions"][r.dataset_split.removeprefix("test_")]["block"]
        assert r.dataset_type == "me/serwild-demo" and r.task_type == "audio-classification"
        if r.metric_type == "accuracy":
            ci = cond["ci"]["wa"]
            assert r.metric_value == round(cond["wa"], 4)
            assert r.metric_name == f"WA (accuracy), 95% CI [{ci['low']:.3f}, {ci['high']:.3f}]"
    assert {(r.metric_type, (r.metric_args or {}).get("average")) for r in results} == {
        ("accuracy", None), ("recall", "macro"), ("f1", "weighted"), ("f1", "macro")}
    text = card.text
    assert "Predictor.from_pretrained" in text and "serwild predict --model" in text
    if report["flags"]["degenerate"]:
        assert "DEGENERATE MODEL" in text


def test_export_refusals_are_one_line(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine\n")
    assert main(["export", str(run), "--out", str(foreign)]) == 2
    assert main(["export", str(run), "--out", str(foreign), "--overwrite"]) == 2
    assert (foreign / "todo.txt").read_text() == "mine\n"  # never touched
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(ln.startswith("serwild export: error: ") for ln in err), err
    assert "not empty" in err[0] and "not an earlier serwild export" in err[1] and "does not exist" in err[2]
    assert not (tmp_path / "x").exists()

    # an HF model folder has a config.json too: --overwrite must not take it for an earlier export
    hf = tmp_path / "hf-model"
    (hf / "evaluation" / "results").mkdir(parents=True)
    before = {"config.json": '{"architectures": ["Wav2Vec2ForSequenceClassification"], "num_labels": 4}\n',
              "README.md": "---\nlicense: apache-2.0\n---\n# my model\n", "training_config.yaml": "lr: 1e-4\n",
              "evaluation/results/run1.csv": "epoch,acc\n1,0.5\n"}
    for name, text in before.items():
        (hf / name).write_text(text)
    assert main(["export", str(run), "--out", str(hf), "--overwrite"]) == 2
    assert {n: (hf / n).read_text() for n in before} == before and not (hf / "model.safetensors").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"serwild export: error: --out {hf} is not an earlier serwild export (its config.json is not a "
                   "serwild-model/1 config): refusing to replace anything in it; choose a new folder"], err
    # an earlier export with a file of the user's beside it is not replaced either
    again = export_run(run, tmp_path / "again")
    (again / "notes.txt").write_text("mine\n")
    assert main(["export", str(run), "--out", str(again), "--overwrite"]) == 2
    assert (again / "notes.txt").read_text() == "mine\n" and (again / "config.json").is_file()
    assert "notes.txt is not an export's" in capsys.readouterr().err
    (again / "notes.txt").unlink()
    assert main(["export", str(run), "--out", str(again), "--overwrite"]) == 0  # an export alone: replaced

    # a damaged or unfinished export is refused when loaded, in one line
    out = export_run(run, tmp_path / "good")
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    wav = tmp_path / "a.wav"
    sf.write(wav, speechlike(1.2, 16000), 16000)
    assert main(["predict", "--model", str(out), str(wav)]) == 2
    (out / "config.json").unlink()
    assert main(["predict", "--model", str(out), str(wav)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert "does not match the sha256" in err[0] and "has no config.json" in err[1], err


def test_onnx_export_matches_torch(run: Path, recordings: dict[str, Path], tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from serwild.deploy.predict import Predictor

    out = export_run(run, tmp_path / "with-onnx", onnx=True)
    meta = json.loads((out / "config.json").read_text())
    assert meta["onnx"]["file"] == "model.onnx" and meta["onnx"]["checked_max_abs_diff"] < 1e-4
    # real rendered blocks, not only the random images the export checked
    model = Predictor(out, device="cpu")
    res, rec = model.open_file(recordings["speech"])
    images = torch.cat(list(model.batches(res, 8, rec)))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": images.numpy()})[0]
    with torch.inference_mode():
        want = model.model(images).numpy()
    assert got.shape == (len(res.blocks), len(CLASSES)) and np.abs(got - want).max() < 1e-3


def _edit_config(folder: Path, edit) -> None:
    meta = json.loads((folder / "config.json").read_text())
    edit(meta)
    (folder / "config.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda m: m.pop("weights_sha256"), "has no weights_sha256 (64 hex digits)"),
    (lambda m: m.update(classes=[CLASSES[0], CLASSES[0], *CLASSES[2:]]), f"names {CLASSES[0]!r} more than once"),
    (lambda m: m.update(classes=["\x1b[31mang", *CLASSES[1:]]), "printable characters"),
    (lambda m: m.update(classes=[f"c{i}" for i in range(10**6)]), "must list 2..1000 class names, got 1000000"),
    (lambda m: m["audio"].update(n_fft=512.5), "'audio.n_fft': expected an integer"),
    (lambda m: m["audio"].update(keep_tail="no"), "'audio.keep_tail': expected true or false"),
    ("link-weights", "model.safetensors is a symbolic link"),
    ("link-config", "config.json is a symbolic link"),
])
def test_an_export_is_trusted_no_further_than_it_checks(run: Path, tmp_path: Path, edit, needle: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A hand-edited or hostile export folder: each is one line from predict; nothing is opened
    through a link, no layer is sized from a million names, no escape reaches the terminal."""
    out = export_run(run, tmp_path / "x")
    if edit == "link-weights":
        (tmp_path / "elsewhere.safetensors").write_bytes((out / "model.safetensors").read_bytes())
        (out / "model.safetensors").unlink()
        (out / "model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    elif edit == "link-config":
        (out / "config.json").rename(tmp_path / "config.json")
        (out / "config.json").symlink_to(tmp_path / "config.json")
    else:
        _edit_config(out, edit)
    wav = tmp_path / "a.wav"
    sf.write(wav, speechlike(1.2, 16000), 16000)
    capsys.readouterr()
    assert main(["predict", "--model", str(out), str(wav)]) == 2
    said = capsys.readouterr().err
    err = [ln for ln in said.splitlines() if "error" in ln]
    assert len(err) == 1 and err[0].startswith("serwild predict: error: ") and needle in err[0], said
    assert "\x1b" not in said and "Traceback" not in said


def test_the_predictor_answers_in_the_ecosystems_shapes(run: Path, tmp_path: Path,
                                                        recordings: dict[str, Path]) -> None:
    """transformers' audio-classification pipeline (``[{"label", "score"}]`` sorted, ``top_k``)
    and SpeechBrain's ``classify_batch(wavs, wav_lens)``, over the same scoring as predict_file."""
    from serwild.deploy.predict import Predictor

    model = Predictor.from_pretrained(export_run(run, tmp_path / "x"), device="cpu", verbose=False)
    assert model.id2label == dict(enumerate(CLASSES)) and model.label2id == {c: i for i, c in enumerate(CLASSES)}
    samples, sr = sf.read(recordings["speech"], dtype="float32")
    want = model.predict_file(recordings["speech"]).probs
    both = model([str(recordings["speech"]), samples], top_k=2)
    ranked = sorted(want.items(), key=lambda kv: -kv[1])[:2]
    assert both == [[{"label": c, "score": p} for c, p in ranked]] * 2  # a file and its samples agree
    assert model({"array": samples, "sampling_rate": sr}) == model(samples)  # HF datasets' Audio dict
    assert len(model(samples)) == len(CLASSES)
    with pytest.raises(ValueError, match="silent"):
        model(np.zeros(16000, dtype=np.float32))
    # a padded batch: the second row's own length is 60 % of the first's
    short = samples[: int(0.6 * len(samples))]
    wavs = torch.zeros(2, len(samples))
    wavs[0], wavs[1, : len(short)] = torch.from_numpy(samples), torch.from_numpy(short)
    out_prob, score, index, labels = model.classify_batch(wavs, torch.tensor([1.0, len(short) / len(samples)]))
    assert out_prob.shape == (2, len(CLASSES)) and labels[0] == model.predict_file(recordings["speech"]).label
    assert labels[1] == model.predict_array(short, sr).label and index.tolist() == [model.label2id[x] for x in labels]
    assert torch.allclose(score, out_prob.max(dim=1).values)


def test_an_export_names_no_folder_of_this_machine(run: Path, tmp_path: Path) -> None:
    """config.json, the model card, training_config.yaml and the copied evaluation name the build,
    the run and the checkpoint by their last part (or fingerprint), never by this machine's path."""
    out = export_run(run, tmp_path / "x")
    root = str(run.parents[1])  # the temp folder every path of the fixture's build and run is under
    for f in sorted(p for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".md", ".yaml", ".csv")):
        assert root not in f.read_text(), f
    meta = json.loads((out / "config.json").read_text())
    assert meta["training"]["checkpoint"] == "best.pt" and "/" not in str(meta["build"]["location"])


def test_streaming_gives_predicts_labels_block_for_block(run: Path, tmp_path: Path,
                                                         recordings: dict[str, Path]) -> None:
    """Predictor.stream over chunks of an odd size, and `serwild listen` over a WAV piped in, give
    per block the labels predict gives the whole recording; silence is reported as silence."""
    from serwild.deploy.predict import Predictor

    out = export_run(run, tmp_path / "x")
    model = Predictor.from_pretrained(out, device="cpu", verbose=False)
    samples, sr = sf.read(recordings["stereo"], dtype="float32")  # 22.05 kHz stereo
    quiet = np.zeros((sr, 2), dtype=np.float32)  # a silent second between two copies
    whole = np.concatenate([samples, quiet, samples])
    want = model.predict_array(whole, sr)
    got = list(model.stream((whole[i:i + 777] for i in range(0, len(whole), 777)), sr))
    scored = {b["start_s"]: b["label"] for b in want.blocks}
    assert [r.label for r in got if not r.silent] == [scored[round(r.start_s, 6)] for r in got if not r.silent]
    assert [r.block for r in got if r.silent] == want.skipped_blocks and len(got) == len(want.blocks) + len(
        want.skipped_blocks)
    assert all(r.running_label in CLASSES and r.latency_ms >= 0 for r in got if not r.silent)
    assert len(list(model.stream([whole], sr, hop_s=0.5))) == 2 * len(got) - 1  # overlapping blocks

    wav = tmp_path / "live.wav"
    sf.write(wav, whole, sr, subtype="PCM_16")
    pcm, _ = sf.read(wav, dtype="float32")
    want = model.predict_array(pcm, sr)  # what predict gives the 16-bit file
    for how in (["--json"], ["--json", "--raw", "--rate", str(sr), "--channels", "2"]):
        pcm16 = (np.clip(pcm, -1, 1 - 2**-15) * 2**15).astype("<i2").tobytes()  # the file's own samples
        data = wav.read_bytes() if "--raw" not in how else pcm16
        proc = subprocess.run([sys.executable, "-m", "serwild", "listen", "--model", str(out), *how, "eval.device=cpu"],
                              input=data, capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        lines = [json.loads(x) for x in proc.stdout.decode().splitlines()]
        assert [x["label"] for x in lines if not x["silent"]] == [b["label"] for b in want.blocks], how
    bad = subprocess.run([sys.executable, "-m", "serwild", "listen", "--model", str(out)], input=b"not a wav",
                         capture_output=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.decode().strip().splitlines()[-1].startswith(
        "serwild listen: error: standard input is not a PCM WAV stream")


class _Input:
    """sounddevice's blocking InputStream API over a recording (no audio device on this machine):
    ``read(frames)`` → (float32 (frames, channels), overflowed)."""

    def __init__(self, samples: np.ndarray, overflow_at: int) -> None:
        self.samples, self.at, self.reads, self.overflow_at = samples, 0, 0, overflow_at

    def read(self, frames: int) -> tuple[np.ndarray, bool]:
        if self.at >= len(self.samples):
            raise KeyboardInterrupt  # the user's Ctrl-C: what ends a live microphone
        chunk = self.samples[self.at:self.at + frames]
        self.at, self.reads = self.at + frames, self.reads + 1
        return chunk, self.reads == self.overflow_at


def test_the_microphone_path_gives_predicts_labels(run: Path, tmp_path: Path, recordings: dict[str, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`listen --mic` reads a tenth of a second at a time from sounddevice's InputStream and scores
    it as predict scores the recording; an overflow is said; without sounddevice, one line."""
    from serwild.cli.listen import mic_chunks
    from serwild.deploy.predict import Predictor

    model = Predictor.from_pretrained(export_run(run, tmp_path / "x"), device="cpu", verbose=False)
    samples, sr = sf.read(recordings["stereo"], dtype="float32")
    mic = _Input(samples, overflow_at=2)
    got = []
    with pytest.raises(KeyboardInterrupt):
        for r in model.stream(mic_chunks(mic, sr), sr):
            got.append(r)
    want = model.predict_array(samples, sr)
    assert [r.label for r in got if not r.silent] == [b["label"] for b in want.blocks] and got
    assert mic.reads == -(-len(samples) // int(sr * 0.1))  # 0.1 s reads
    assert capsys.readouterr().err.count("the input overflowed") == 1
    # here the mic extra is not installed: one line saying how to get it; with it, device 99999 is
    # none there is, and that is one line too
    proc = subprocess.run([sys.executable, "-m", "serwild", "listen", "--model", str(tmp_path / "x"), "--mic",
                           "--device", "99999"], capture_output=True, timeout=300)
    last = proc.stderr.decode().strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("serwild listen: error: --mic"), proc.stderr.decode()


def test_the_model_card_carries_the_corpus_card_and_the_hub_id(run: Path, tmp_path: Path) -> None:
    """license, license_link and language from the corpus's card (here its kind's defaults, then the
    card: section), ``datasets`` and the model-index's dataset type from the build's Hub id (an
    hf:// build location), and a BibTeX block; parsed with huggingface_hub's ModelCard."""
    hub = pytest.importorskip("huggingface_hub")
    from serwild.deploy import card

    meta = json.loads((export_run(run, tmp_path / "x") / "config.json").read_text())
    meta["card"] = {**meta["card"], "license": "cc-by-4.0", "license_link": "https://example.org/l",
                    "language": ["en"], "citation": "@misc{corpus, title={A corpus}}"}
    meta["build"]["location"] = "hf://datasets/me/serwild-cremad/"
    parsed = hub.ModelCard(card.model_card(meta, "m"))
    assert (parsed.data.license, parsed.data.license_link, parsed.data.language, parsed.data.datasets) == (
        "cc-by-4.0", "https://example.org/l", ["en"], ["me/serwild-cremad"])
    results = parsed.data.eval_results or []
    assert results and {r.dataset_type for r in results} == {"me/serwild-cremad"}
    assert "```bibtex\n@article{yusuf2022noise" in parsed.text and "@misc{corpus, title={A corpus}}" in parsed.text
    # without a card: section, a model of a CSV corpus is "unknown", never IEMOCAP's licence
    meta["card"], meta["build"]["corpus"] = {}, "csv"
    assert card.license_fields(meta, None) == {"license": "unknown"}
