#!/usr/bin/env bash
# The GPU check, in one call: train through `serwild train` (torchrun, NCCL, AMP bf16,
# channels_last) with and without the frozen-feature cache, then `evaluate` and `predict` on
# the GPU; print images/s, the share of time waiting for input and peak GPU memory; fail
# loudly (non-zero exit, the failing step named) on any error.
#
#   bash benchmarks/gpu_bundle.sh              # here: the build + wheels to carry (< 64 MiB)
#   bash benchmarks/gpu_check.sh               # there: on the GPU machine, from the repo root
#   bash benchmarks/gpu_check.sh --cpu         # the same steps, tiny, on a CPU (the test suite runs this)
#
# GPU mode expects torch with CUDA preinstalled; packages it lacks are installed from
# benchmarks/gpu_bundle/wheels (no index needed), serwild itself from this checkout, and the
# shards come prebuilt in benchmarks/gpu_bundle/build (no Ray or audio stack needed there).
# Results: $OUT (default: a temp folder) holds the runs, reports and summary.json.
set -euo pipefail

MODE=gpu
[[ "${1:-}" == "--cpu" ]] && MODE=cpu
HERE="$(cd "$(dirname "$0")/.." && pwd)"
cd "$HERE"
PY="${PYTHON:-python3}"
[[ -x .venv/bin/python && "$MODE" == cpu ]] && PY=.venv/bin/python
OUT="${OUT:-$(mktemp -d -t serwild-gpu-check-XXXX)}"
mkdir -p "$OUT"
BUNDLE="${BUNDLE:-benchmarks/gpu_bundle}"
STEP="start"
trap 'echo "GPU CHECK FAILED at step: $STEP (exit $?)" >&2' ERR
step() { STEP="$1"; echo "=== $1" >&2; }

step "environment"
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), file=sys.stderr)"
if [[ "$MODE" == gpu ]]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'"
  if [[ -d "$BUNDLE/wheels" ]]; then
    # Only what this machine lacks: its own torch/numpy stay as they are.
    missing=$("$PY" - "$BUNDLE/requirements.txt" <<'EOF'
import importlib.util, sys
mods = {"webdataset": "webdataset", "braceexpand": "braceexpand", "scikit-learn": "sklearn", "scipy": "scipy",
        "matplotlib": "matplotlib", "pyyaml": "yaml", "tqdm": "tqdm", "pillow": "PIL", "soundfile": "soundfile",
        "librosa": "librosa", "joblib": "joblib", "threadpoolctl": "threadpoolctl"}
wanted = [l.strip() for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")]
print(" ".join(w for w in wanted if importlib.util.find_spec(mods.get(w.split("=")[0].lower(), w)) is None))
EOF
)
    [[ -n "$missing" ]] && "$PY" -m pip install -q --no-index --find-links "$BUNDLE/wheels" $missing
  fi
  "$PY" -c "import serwild" 2>/dev/null || "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e .
fi

if [[ "$MODE" == gpu ]]; then
  DEV=cuda; AMP=bf16; NPROC=1; BATCH=128; EPOCHS=3; WORKERS=8; SPE=all; ARCH=alexnet
  BUILD="${BUILD:-$BUNDLE/build}"
else
  # The tiny network (AlexNet's layers at small widths): the same code path, in seconds.
  DEV=cpu; AMP=none; NPROC=1; BATCH=8; EPOCHS=2; WORKERS=0; SPE=32; ARCH=tiny
  if [[ -z "${BUILD:-}" ]]; then  # BUILD=<a finished build> skips this
    BUILD="$OUT/build"
    step "build (tiny, serial)"
    "$PY" -m serwild build --config configs/demo-tiny.yaml --serial out="$BUILD" \
        corpus.root="$OUT/corpus" noise.dir="$OUT/corpus/noise" >&2
  fi
fi
# Train on every condition of the build (experiment 2).
CONDS=$("$PY" -c "import json, sys; print('[' + ', '.join(json.load(open(sys.argv[1]))['conditions']) + ']')" \
        "$BUILD/manifest.json")

step "weights file (a random $ARCH: ImageNet weights cannot be downloaded offline)"
"$PY" -c "
import torch; from serwild.trainer.model import new_model
torch.manual_seed(0); torch.save(new_model('$ARCH', 1000).state_dict(), '$OUT/weights.pt')"

COMMON=(--nproc "$NPROC" --overwrite --config configs/demo-tiny.yaml train.shards="$BUILD" train.run_dir="$OUT/runs"
        train.arch="$ARCH" train.recipe=paper train.pretrained="$OUT/weights.pt" train.device="$DEV" train.amp="$AMP"
        train.channels_last=true train.batch_size="$BATCH" train.epochs="$EPOCHS" train.num_workers="$WORKERS"
        train.samples_per_epoch="$SPE" train.conditions="$CONDS" train.verify=size
        train.feature_cache_dir="$OUT/feature-cache")
for cache in off on; do
  step "train, paper recipe, feature cache $cache"
  "$PY" -m serwild train "${COMMON[@]}" train.name="cache-$cache" train.feature_cache="$cache" >&2
done

step "evaluate on $DEV"
"$PY" -m serwild evaluate --checkpoint "$OUT/runs/cache-on/best.pt" --out "$OUT/report" \
    eval.device="$DEV" eval.batch_size="$BATCH" eval.num_workers="$WORKERS" >&2

step "predict on $DEV"
"$PY" -c "
import numpy as np, soundfile as sf
t = np.arange(3 * 16000) / 16000
sf.write('$OUT/rec.wav', (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype('float32'), 16000)"
"$PY" -m serwild predict --checkpoint "$OUT/runs/cache-on/best.pt" "$OUT/rec.wav" --json eval.device="$DEV" \
    > "$OUT/predict.json"

step "summary"
"$PY" - "$OUT" "$MODE" <<'EOF'
import json, sys
from pathlib import Path
out, mode = Path(sys.argv[1]), sys.argv[2]
rows = {}
for cache in ("off", "on"):
    recs = [json.loads(l) for l in (out / "runs" / f"cache-{cache}" / "metrics.jsonl").read_text().splitlines()]
    later = recs[1:] or recs  # epochs after the first (the first builds the cache)
    rows[cache] = {"images_per_s": sum(r["images_per_s"] for r in later) / len(later),
                   "input_wait_fraction": max(r["input_wait_fraction"] for r in later),
                   "gpu_memory_peak_gb": max(r.get("gpu_memory_peak_gb", 0.0) for r in recs),
                   "first_epoch_s": recs[0]["seconds"], "epochs": len(recs)}
pred = json.loads((out / "predict.json").read_text())
report = json.loads((out / "report" / "metrics.json").read_text())
summary = {"mode": mode, "device": report["device"], "train": rows,
           "cache_speedup_after_first_epoch": rows["on"]["images_per_s"] / rows["off"]["images_per_s"],
           "evaluated_conditions": sorted(report["conditions"]), "predict_label": pred["files"][0]["label"]}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
for cache, r in rows.items():
    print(f"cache {cache:3s}: {r['images_per_s']:8.1f} img/s after epoch 1, waiting for input "
          f"{r['input_wait_fraction']:.0%}, peak GPU memory {r['gpu_memory_peak_gb']:.2f} GB, "
          f"epoch 1 {r['first_epoch_s']:.1f} s")
print(f"cache speed-up {summary['cache_speedup_after_first_epoch']:.2f}x; evaluate on {summary['device']}: "
      f"{', '.join(summary['evaluated_conditions'])}; predict: {summary['predict_label']}")
print(f"GPU CHECK OK ({mode}); details in {out}/summary.json")
EOF
