"""The model card (README.md) of an exported model, in the Hub's model-card format.

YAML metadata (with a ``model-index``: one result per test condition, per 1 s block), then the text.
Each metric's name carries its 95 % interval, since the model-index has no field for one. What the
card holds: docs/models.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from serwild.builder.hubcard import citation_section, corpus_card, hub_fields
from serwild.evaluate import provenance
from serwild.evaluate.document import condition_label, order_conditions
from serwild.metrics import METRICS, VALIDATION

PAPER = ("Yusuf et al. (2022), *Speech Emotion Recognition using a Novel Noise Augmentation Approach and Deep "
         "Learning*")
# How Hugging Face's model-index names each validation metric (serwild.metrics.VALIDATION): type, args.
MODEL_INDEX: dict[str, tuple[str, dict[str, str] | None]] = {
    "wa": ("accuracy", None), "ua": ("recall", {"average": "macro"}),
    "weighted_f1": ("f1", {"average": "weighted"}), "macro_f1": ("f1", {"average": "macro"})}


def license_fields(meta: Mapping[str, Any], license_id: str | None) -> dict[str, Any]:
    """The user's licence (``--license``), else the corpus's (the ``card:`` section, or what serwild
    knows of its kind: MIT for the synthetic corpus, IEMOCAP's own licence, ``unknown`` for a list
    of recordings nobody described): weights inherit the licence of the data they learnt."""
    if license_id:
        return {"license": license_id}
    fields = hub_fields(dict(meta.get("card") or corpus_card({"corpus": {"kind": (meta.get("build") or {})
                                                                          .get("corpus")}})))
    return {k: fields[k] for k in ("license", "license_name", "license_link") if k in fields}


def hub_dataset_id(meta: Mapping[str, Any], dataset_id: str | None) -> str | None:
    """The build's Hub id: ``--dataset-id``, or the repo of an ``hf://datasets/<user>/<repo>`` build."""
    if dataset_id:
        return dataset_id
    location = str((meta.get("build") or {}).get("location") or "")
    if location.startswith("hf://datasets/"):
        parts = location[len("hf://datasets/"):].split("/")
        return "/".join(parts[:2]) if len(parts) >= 2 else None
    return None


def model_index(meta: Mapping[str, Any], name: str, dataset_id: str | None) -> list[dict[str, Any]]:
    """One result per test condition (per 1 s block), each metric with its interval in its name."""
    ev = meta.get("evaluation") or {}
    conds = ev.get("conditions") or {}
    ds, kind = str(meta["dataset"]), (meta.get("build") or {}).get("corpus", "unknown")
    results = []
    for c in order_conditions(conds):
        block = conds[c]["block"]
        metrics = []
        for key in VALIDATION:
            (mtype, args), pretty = MODEL_INDEX[key], METRICS[key].column
            ci = block.get(f"{key}_ci")
            entry: dict[str, Any] = {"type": mtype, "value": round(block[key], 4),
                                     "name": pretty + (f", 95% CI [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")}
            if args:
                entry["args"] = dict(args)  # a copy each: shared objects would become YAML anchors
            metrics.append(entry)
        results.append({
            "task": {"type": "audio-classification", "name": "Speech emotion recognition"},
            "dataset": {"type": dataset_id or f"serwild-{kind}-{ds}", "name": f"{ds.upper()} ({kind} corpus), test, "
                        f"{condition_label(c, conds[c].get('snr_db'))}, per 1 s block (N={block['n']})",
                        "config": ds, "split": f"test_{c}"},
            "metrics": metrics})
    return [{"name": name, "results": results}] if results else []


def front_matter(meta: Mapping[str, Any], name: str, license_id: str | None, dataset_id: str | None) -> str:
    dataset_id = hub_dataset_id(meta, dataset_id)
    language = (meta.get("card") or {}).get("language") or []
    data: dict[str, Any] = {**license_fields(meta, license_id), **({"language": language} if language else {}),
                            "library_name": "serwild", "pipeline_tag": "audio-classification",
                            "tags": ["audio-classification", "speech-emotion-recognition", "spectrogram",
                                     str(meta.get("arch", "alexnet")),
                                     "noise-robustness", "serwild"]}
    if dataset_id:
        data["datasets"] = [dataset_id]
    data["metrics"] = ["accuracy", "recall", "f1"]
    index = model_index(meta, name, dataset_id)
    if index:
        data["model-index"] = index
    return "---\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def model_card(meta: Mapping[str, Any], name: str, license_id: str | None = None,
               dataset_id: str | None = None) -> str:
    parts = [front_matter(meta, name, license_id, dataset_id), f"# {name}", "", *warnings(meta), summary(meta), "",
             *usage(name), *input_section(meta), *training_section(meta), *evaluation_section(meta),
             *limits(meta), *files_section(meta), "## Versions", "", versions_text(meta), "",
             *citation_section(dict(meta.get("card") or {}), "This model, trained and exported with serwild,")]
    return "\n".join(parts)


def warnings(meta: Mapping[str, Any]) -> list[str]:
    flags = ((meta.get("evaluation") or {}).get("flags") or {}).get("messages") or []
    lines = [f"> ⚠ **{m.split(':', 1)[0]}**:{m.split(':', 1)[1]}" for m in flags]
    if meta.get("smoke"):
        lines.append(f"> {provenance.SMOKE_NOTE}")
    if not meta.get("evaluation"):
        lines.append("> This model was exported without an evaluation: nothing here says how well it works.")
    return [*lines, ""] if lines else []


def _net(meta: Mapping[str, Any]) -> str:
    arch = str(meta.get("arch", "alexnet"))
    return {"alexnet": "AlexNet", "tiny": "AlexNet (small widths)"}.get(arch, arch)


def summary(meta: Mapping[str, Any]) -> str:
    t, b, a = meta["training"], meta["build"], meta["audio"]
    return (f"Speech emotion recognition from {a['block_seconds']:g} s blocks of audio: {_net(meta)} trained on "
            f"\"{a['colormap']}\" spectrogram images, the method of {PAPER}. Classes: "
            f"{', '.join(meta['classes'])} (dataset {meta['dataset'].upper()}, {b.get('corpus')} corpus). Trained on "
            f"{', '.join(t['conditions'])} blocks (recipe {(t.get('recipe') or {}).get('name', '?')}, pretrained "
            f"`{t.get('pretrained')}`).")


def usage(name: str) -> list[str]:
    return ["## How to use", "", "With serwild installed (`pip install .` in a clone of its repository):", "",
            "```bash",
            f"serwild predict --model {name} recording.wav [more.wav …] [--json]",
            "```", "", "```python", "from serwild.deploy import Predictor", "",
            f'model = Predictor.from_pretrained("{name}")         # this folder (e.g. a clone of its Hub repo)',
            'result = model.predict_file("recording.wav")        # any rate, mono or stereo',
            "print(result.label, result.probs)                   # the whole recording",
            "for block in result.blocks:                         # each 1 s block",
            '    print(block["start_s"], block["label"], block["probs"])',
            "result = model.predict_array(samples, sample_rate)  # a numpy array in memory", "```", "",
            "A recording shorter than one block is padded with silence and scored (`padded_s` says how much). "
            "A Hub repo is downloaded first (`huggingface_hub.snapshot_download(repo_id)`), then loaded the same "
            "way.", ""]


def input_section(meta: Mapping[str, Any]) -> list[str]:
    a, img = meta["audio"], meta["image"]
    return ["## Input", "",
            f"Audio is mixed to mono, cut into {a['block_seconds']:g} s blocks, each resampled to {a['sample_rate']} "
            f"Hz and peak-normalised; a power STFT (n_fft {a['n_fft']}, hop {a['hop_length']}) in dB below the "
            f"block's maximum (clipped at {a['top_db']:g} dB) is coloured with `{a['colormap']}`, resized to "
            f"{img['size']}×{img['size']} and normalised with ImageNet's mean and std. Blocks below -80 dBFS are "
            "skipped (as in training). Per block the model gives class logits; a recording's label is the argmax "
            "of the mean of its block logits. `config.json` holds every setting.", ""]


def training_section(meta: Mapping[str, Any]) -> list[str]:
    t, b = meta["training"], meta["build"]
    fold = "all training folds" if t.get("fold") is None else f"fold {t['fold']} held out for validation"
    return ["## Training", "",
            f"- Data: build `{b.get('location')}` (manifest fingerprint `{str(b.get('fingerprint'))[:12]}`), "
            f"{b.get('corpus')} corpus, split `{b.get('split')}`{_held(b)}, noise at "
            f"{', '.join(f'{s:g}' for s in b['snr_db'])} "
            f"dB SNR; trained on {', '.join(t['conditions'])}; {fold}; seed {t.get('seed')}.",
            f"- Recipe: {_recipe(t.get('recipe'))}; pretrained `{t.get('pretrained')}`.",
            f"- Budget: {provenance.budget_line(t.get('budget'))}.",
            f"- Checkpoint: epoch {t.get('epoch')}" + (f", best validation {t['best']['metric']} "
                                                        f"{t['best']['score']:.3f} at epoch {t['best']['epoch']}"
                                                        if (t.get("best") or {}).get("score") is not None else "")
            + ".", ""]


def _held(build: Mapping[str, Any]) -> str:
    speakers = build.get("test_speakers")
    return f" (tested on speakers unseen in training: {', '.join(speakers)})" if speakers else ""


def _recipe(r: Any) -> str:
    if not isinstance(r, Mapping):
        return str(r)
    return ", ".join(f"{k} {v}" for k, v in r.items())


def evaluation_section(meta: Mapping[str, Any]) -> list[str]:
    ev = meta.get("evaluation")
    if not ev:
        return ["## Evaluation", "", "Not evaluated (run `serwild evaluate` before exporting).", ""]
    conds = ev["conditions"]
    lines = ["## Evaluation", "", "Each test condition scored separately (test noise never heard in training); "
             "95 % intervals from a cluster bootstrap over test utterances.", ""]
    for unit, title in (("block", "Per 1 s block"), ("utterance", "Per utterance (mean of its block logits)")):
        lines += [f"{title}:", "", "| Test condition | N | " + " | ".join(METRICS[k].column for k in VALIDATION) + " |",
                  "|---|---|" + "---|" * len(VALIDATION)]
        for c in order_conditions(conds):
            m = conds[c][unit]
            cells = [_cell(m[k], m.get(f"{k}_ci")) for k in VALIDATION]
            lines.append(f"| {condition_label(c, conds[c].get('snr_db'))} | {m['n']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["The full report (per-class tables, confusion matrices, figures, every block's prediction) is in "
              "`evaluation/`.", ""]
    return lines


def _cell(v: float, ci: list[float] | None) -> str:
    return f"{v:.3f}" if not ci else f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def limits(meta: Mapping[str, Any]) -> list[str]:
    corpus = (meta.get("build") or {}).get("corpus")
    out = ["## Limitations", "",
           "- One model of one training run: the intervals cover which test utterances were drawn, not training's "
           "run-to-run variation.",
           f"- The split is `{meta['build'].get('split')}`"
           + (": blocks of one utterance may sit in both train and test (the paper's protocol), so these scores "
              "are optimistic." if meta["build"].get("split") == "block" else "."),
           f"- {len(meta['classes'])} emotion classes ({', '.join(meta['classes'])}); speech in other languages, "
           "recording set-ups or noise types may score lower."]
    if corpus == "synthetic":
        out.append("- Trained on serwild's synthetic corpus: it says nothing about real emotional speech.")
    return [*out, ""]


def files_section(meta: Mapping[str, Any]) -> list[str]:
    rows = ["## Files", "", f"- `model.safetensors`: the weights (torchvision {_net(meta)}, last layer "
            f"{meta['num_classes']}-way), float32;",
            "- `config.json`: classes, audio and image settings, build, training, evaluation summary, versions;",
            "- `training_config.yaml`: the training run's resolved config;"]
    if meta.get("evaluation"):
        rows.append("- `evaluation/`: the evaluation report;")
    if meta.get("onnx"):
        rows.append(f"- `model.onnx`: image → logits ({meta['onnx']['input']}), checked against torch with "
                    f"onnxruntime (max |Δ logit| {meta['onnx']['checked_max_abs_diff']:.1e});")
    return [*rows, ""]


def versions_text(meta: Mapping[str, Any]) -> str:
    v = meta.get("versions") or {}
    return (f"Trained with serwild {v.get('trained_with')}; exported with "
            f"{provenance.versions_line(v.get('exported_with'))}.")
