"""A trained model as a small folder anyone can load: ``serwild export RUN_DIR --out DIR``.

:func:`read_export` loads it back (``Predictor.from_pretrained``): no run folder, build or training
state is needed. config.json is written last, so a folder without it is an unfinished export and is
refused. Nothing is written outside ``DIR``, and nothing in it names a folder of this machine (an
export is meant to be shared). The folder's files: docs/models.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from serwild.builder.config import AudioConfig
from serwild.builder.hubcard import corpus_card
from serwild.config import ConfigError, config_from_resolved, from_dict
from serwild.data.manifest import sha256_file
from serwild.data.transforms import IMAGE_SIZE, MEAN, STD
from serwild.deploy import card
from serwild.errors import UsageError
from serwild.evaluate import health, provenance
from serwild.evaluate.document import Report, read_report
from serwild.metrics import METRICS, VALIDATION
from serwild.processes import atomic
from serwild.processes.checkpoint import ARCHS, Checkpoint, load_checkpoint
from serwild.text import class_names_problem, portable_json, portable_path

FORMAT = "serwild-model/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
ONNX = "model.onnx"
ONNX_TOLERANCE = 1e-4  # max |logit difference| between onnxruntime and torch on random images
CHECKPOINTS = ("best.pt", "last.pt")  # a run folder's model, in order of preference


@dataclass(frozen=True)
class Pretrained:
    """What a loader needs from an export folder or a checkpoint."""

    state: dict[str, torch.Tensor]
    classes: list[str]
    audio: AudioConfig
    dataset: str
    source: str  # "exported model DIR" or "checkpoint PATH"
    info: dict[str, Any]  # config.json (an export) or the checkpoint's metadata


# ----------------------------------------------------------------------------- writing


def find_checkpoint(run: str | Path) -> Path:
    """``run`` is a run folder (its best.pt, else last.pt) or a checkpoint file."""
    p = Path(run)
    if p.is_file():
        return p
    if not p.is_dir():
        raise UsageError(f"{run} does not exist (give a run folder or a checkpoint)")
    for name in CHECKPOINTS:
        if (p / name).is_file():
            return p / name
    raise UsageError(f"{run} holds no {' or '.join(CHECKPOINTS)}: is it a run folder of serwild train?")


def export_run(run: str | Path, out: str | Path, *, report_dir: str | Path | None = None, onnx: bool = False,
               license_id: str | None = None, dataset_id: str | None = None, overwrite: bool = False) -> Path:
    """Write the export folder ``out`` for the run (or checkpoint) ``run``; returns ``out``."""
    path = find_checkpoint(run)
    out = Path(out)
    prepare_out(out, overwrite)
    print(f"serwild export: reading {path} ({path.stat().st_size / 1e6:.0f} MB) …", file=sys.stderr, flush=True)
    ckpt = load_checkpoint(path, map_location="cpu")
    report = find_report(path, ckpt, report_dir)
    meta = portable_json(export_config(ckpt, path, report), [])  # shared: no folder of this machine
    digest = write_weights(out / WEIGHTS, ckpt.model, meta)
    atomic.write_text(out / "training_config.yaml", yaml.safe_dump(portable_json(ckpt.config, []),
                                                                   sort_keys=False))
    if report is not None:
        copy_report(report, out / "evaluation", local_paths(ckpt, path, report))
    if onnx:
        meta["onnx"] = write_onnx(ckpt, out / ONNX)
    meta["weights_sha256"] = digest
    atomic.write_text(out / "README.md", card.model_card(meta, out.name, license_id, dataset_id))
    atomic.write_json(out / CONFIG, meta)  # last: its presence marks a finished export
    return out


EXPORT_FILES = (CONFIG, WEIGHTS, ONNX, "README.md", "training_config.yaml")  # and the folder evaluation/


def prepare_out(out: Path, overwrite: bool) -> None:
    """``out`` must be new, empty, or (with ``overwrite``) an earlier export, whose files go."""
    atomic.require_writable(out, "--out", "choose a writable folder")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"--out {out} is not empty: choose a new folder, or pass --overwrite to replace "
                             "an earlier export there")
        why = not_an_export(out)
        if why is not None:
            raise UsageError(f"--out {out} is not an earlier serwild export ({why}): refusing to replace "
                             "anything in it; choose a new folder")
        for name in EXPORT_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "evaluation", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def not_an_export(folder: Path) -> str | None:
    """Why ``folder`` is not an earlier serwild export (None: it is one, and only that). Any
    ``config.json`` is not enough: an HF model folder has one too, beside files of its own."""
    config = folder / CONFIG
    if config.is_symlink() or not config.is_file():
        return f"no {CONFIG} of its own"
    try:
        fmt = json.loads(config.read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    if fmt != FORMAT:
        return f"its {CONFIG} is not a {FORMAT} config"
    for entry in sorted(folder.iterdir()):
        known = entry.name in EXPORT_FILES or entry.name == "evaluation"
        if not known or entry.is_symlink() or (entry.name == "evaluation") != entry.is_dir():
            return f"{entry.name} is not an export's"
    return None


def find_report(checkpoint: Path, ckpt: Checkpoint, report_dir: str | Path | None) -> Path | None:
    """The run's report folder when it evaluated this very model (same build, dataset and
    epoch); a report of another model is left out, with a note."""
    folder = Path(report_dir) if report_dir is not None else checkpoint.parent / "report"
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        if report_dir is not None:
            raise UsageError(f"--report {report_dir} holds no metrics.json (a serwild evaluate report folder)")
        print(f"serwild export: note: {folder} has no evaluation: the card will have no results "
              f"(run serwild evaluate --checkpoint {checkpoint} first)", file=sys.stderr)
        return None
    m = read_report(metrics)
    same = (m.manifest_fingerprint == ckpt.manifest_fingerprint and m.dataset == ckpt.dataset
            and m.protocol.get("epoch") == ckpt.epoch)
    if not same:
        why = f"{metrics} is the evaluation of another model (build, dataset or epoch differ)"
        if report_dir is not None:
            raise UsageError(why)
        print(f"serwild export: note: {why}: left out", file=sys.stderr)
        return None
    return folder


def export_config(ckpt: Checkpoint, path: Path, report: Path | None) -> dict[str, Any]:
    """config.json: what loading needs, then what a reader of the model needs to know."""
    cfg = config_from_resolved(ckpt.config)
    classes = list(ckpt.classes)
    metrics = read_report(report / "metrics.json") if report is not None else None
    return {
        "format": FORMAT, "arch": ckpt.arch, "num_classes": len(classes), "classes": classes,
        "id2label": {str(i): c for i, c in enumerate(classes)}, "label2id": {c: i for i, c in enumerate(classes)},
        "dataset": ckpt.dataset, "audio": asdict(cfg.audio),
        "image": {"size": IMAGE_SIZE, "mean": list(MEAN), "std": list(STD), "colormap": cfg.audio.colormap},
        "build": {"fingerprint": ckpt.manifest_fingerprint, "location": ckpt.shards,
                  "corpus": cfg.corpus.kind, "split": cfg.split.strategy, "snr_db": list(cfg.snr_db),
                  "test_speakers": metrics.protocol.get("test_speakers") if metrics is not None else None},
        "training": {"conditions": list(cfg.train.conditions), "fold": cfg.cv.fold, "pretrained": cfg.train.pretrained,
                     "recipe": ckpt.recipe, "epoch": ckpt.epoch, "best": ckpt.best,
                     "seed": cfg.seed, "budget": provenance.training_budget(ckpt, path),
                     "checkpoint": str(path)},
        "card": corpus_card(ckpt.config),  # the corpus's licence, language, citation (the card: section)
        "smoke": bool(provenance.smoke_note(ckpt.config)),
        "versions": {"trained_with": ckpt.serwild_version, "exported_with": provenance.versions()},
        "evaluation": evaluation_summary(metrics) if metrics is not None else None,
    }


def evaluation_summary(m: Report) -> dict[str, Any]:
    """Per test condition and unit: n, WA, UA, weighted and macro F1 with their intervals; the flags."""
    keys = {name: METRICS[name].path for name in VALIDATION}
    conds: dict[str, Any] = {}
    for name, c in m.conditions.items():
        conds[name] = {"snr_db": c.get("snr_db")}
        for unit in ("block", "utterance"):
            u = c[unit]
            values: dict[str, Any] = {"n": u["n"]}
            for key, where in keys.items():
                node: Any = u
                for part in where.split("."):
                    node = node[part]
                values[key] = float(node)
                ci = (u.get("ci") or {}).get(key)
                if ci:
                    values[f"{key}_ci"] = [float(ci["low"]), float(ci["high"])]
            conds[name][unit] = values
    return {"conditions": conds, "uncertainty": m.uncertainty, "flags": health.model_flags(m),
            "report": "evaluation/report.md"}


def write_weights(path: Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """The state_dict as safetensors (contiguous CPU copies); returns the file's sha256."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    data = save(tensors, metadata={"format": "pt", "serwild": FORMAT, "arch": str(meta["arch"]),
                                   "classes": json.dumps(meta["classes"])})
    atomic.write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def local_paths(ckpt: Checkpoint, path: Path, report: Path) -> list[str]:
    """The absolute paths of this machine a run's report may name (its build, run folder,
    checkpoint, corpus…), longest first: what :func:`copy_report` makes portable."""
    found: set[str] = {str(path.resolve()), str(path), str(path.parent), str(report)}

    def walk(v: Any) -> None:
        if isinstance(v, str) and os.path.isabs(v):
            found.add(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(ckpt.config)
    walk(ckpt.shards)
    walk(read_report(report / "metrics.json").to_dict())
    return sorted((p for p in found if os.path.isabs(p) and p != "/"), key=len, reverse=True)


def copy_report(src: Path, dst: Path, local: Sequence[str] = ()) -> None:
    """The report folder's plain files (no links, no sub-folders); in its text files each of the
    ``local`` paths becomes its last part (the export is shared; this machine's folders are not)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.is_symlink() and not f.name.startswith("."):
            data = f.read_bytes()
            if f.suffix in (".md", ".json", ".csv", ".yaml", ".txt"):
                text = data.decode("utf-8", errors="surrogateescape")
                for p in local:
                    text = text.replace(p, portable_path(p, []))
                data = text.encode("utf-8", errors="surrogateescape")
            atomic.write_bytes(dst / f.name, data)


# ----------------------------------------------------------------------------- ONNX


def write_onnx(ckpt: Checkpoint, path: Path) -> dict[str, Any]:
    """image → logits as ONNX (torch's exporter, a dynamic batch), kept only once onnxruntime's
    logits match torch's on random images to :data:`ONNX_TOLERANCE`."""
    try:
        import onnxruntime  # noqa: F401  (checked before the slow export)
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError as e:
        raise UsageError(f"--onnx needs the onnx extra ({e.name} is not installed): pip install 'serwild[onnx]'") \
            from None
    from serwild.trainer.model import model_from_checkpoint

    model = model_from_checkpoint(ckpt).eval()
    example = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    buf = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=["image"],
                                        output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                        external_data=False, verbose=False)
            data = program.model_proto.SerializeToString()
    except Exception as e:  # an exporter failure of this torch build: one line, and no model.onnx
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"torch {torch.__version__} could not export the model to ONNX ({type(e).__name__}: "
                         f"{first})") from None
    diff = onnx_difference(data, model)
    if diff > ONNX_TOLERANCE:
        raise UsageError(f"the ONNX model's logits differ from torch's by {diff:.2g} (> {ONNX_TOLERANCE:g}): "
                         "not written")
    atomic.write_bytes(path, data)
    return {"file": ONNX, "input": f"image: float32 (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), ImageNet-normalised",
            "output": "logits: float32 (N, K)", "checked_max_abs_diff": diff, "checked_with": "onnxruntime"}


def onnx_difference(model_bytes: bytes, model: torch.nn.Module, batch: int = 3) -> float:
    """Largest |logit| difference between onnxruntime and torch on ``batch`` random images."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = model(x).numpy()
    got = session.run(["logits"], {"image": x.numpy()})[0]
    return float(abs(got - want).max())


# ----------------------------------------------------------------------------- reading


def read_export(folder: str | Path) -> Pretrained:
    """An export folder's weights and settings, checked: format, sha256 of the weights,
    finite weights, classes. One UsageError line for anything wrong."""
    folder = Path(folder)
    meta = read_config(folder)
    weights = folder / WEIGHTS
    if weights.is_symlink():  # an export is plain files: a link may point anywhere (/etc/passwd)
        raise UsageError(f"{weights} is a symbolic link: an export folder holds its own files")
    if not weights.is_file():
        raise UsageError(f"{folder} has no {WEIGHTS}: the export is incomplete")
    want = meta.get("weights_sha256")
    if not isinstance(want, str) or not re.fullmatch(r"[0-9a-f]{64}", want):
        raise UsageError(f"{folder / CONFIG} has no weights_sha256 (64 hex digits) to check {WEIGHTS} against: "
                         "the export is incomplete or was edited")
    if sha256_file(weights) != want:
        raise UsageError(f"{weights} does not match the sha256 in {CONFIG}: the file is damaged or was replaced")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(weights)
    except (SafetensorError, ValueError) as e:
        raise UsageError(f"{weights} is not readable safetensors ({e})") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UsageError(f"{weights}: weight {bad[0]} is not finite (NaN or inf): the model is damaged")
    try:  # typed as a config file is: n_fft 512.5 or keep_tail "no" are refused, not used
        audio = from_dict(AudioConfig, meta.get("audio"), "audio.")
    except ConfigError as e:
        raise UsageError(f"{folder / CONFIG}: audio settings are not valid ({e})") from None
    return Pretrained(state, list(meta["classes"]), audio, str(meta.get("dataset")), f"exported model {folder}", meta)


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG
    if path.is_symlink():
        raise UsageError(f"{path} is a symbolic link: an export folder holds its own files")
    if not path.is_file():
        hint = " (an export in progress, or not an export folder)" if (folder / WEIGHTS).is_file() else ""
        raise UsageError(f"{folder} has no {CONFIG}{hint}: give a folder written by serwild export")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise UsageError(f"{path} is not a serwild model config (format {got!r}, expected {FORMAT!r})")
    if meta.get("arch") not in ARCHS:
        raise UsageError(f"{path}: architecture {meta.get('arch')!r} is not supported ({', '.join(ARCHS)})")
    problem = class_names_problem(meta.get("classes"))
    if problem is not None:
        raise UsageError(f"{path}: 'classes' {problem}")
    return meta


def read_checkpoint(path: str | Path) -> Pretrained:
    ckpt = load_checkpoint(path, map_location="cpu")
    cfg = config_from_resolved(ckpt.config)
    info = {k: v for k, v in ckpt.weights_only().to_dict().items() if k != "model"}
    return Pretrained(ckpt.model, list(ckpt.classes), cfg.audio, str(ckpt.dataset), f"checkpoint {path}",
                      info)


def read_pretrained(path: str | Path) -> Pretrained:
    """An export folder, a run folder (its best.pt) or a checkpoint file."""
    p = Path(path)
    if p.is_file() and p.suffix == ".safetensors":
        p = p.parent
    if p.is_dir() and ((p / CONFIG).is_file() or (p / WEIGHTS).is_file()):
        return read_export(p)
    if p.is_dir() and any((p / n).is_file() for n in CHECKPOINTS):
        return read_checkpoint(find_checkpoint(p))
    if p.is_file():
        return read_checkpoint(p)
    what = "folder" if p.is_dir() else "path"
    raise UsageError(f"{path}: this {what} is not an exported model (config.json + {WEIGHTS}), a run folder "
                     "or a checkpoint" if p.exists() else f"{path} does not exist")
