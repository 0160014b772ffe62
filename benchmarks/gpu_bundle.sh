#!/usr/bin/env bash
# What benchmarks/gpu_check.sh needs on a GPU machine with no package index, under the
# 64 MiB a device call carries: a prebuilt AHSN build of the demo corpus (so the GPU machine
# needs neither Ray nor the audio stack to build) and wheels of the pure-Python or small
# packages a torch-only image tends to lack. Written to benchmarks/gpu_bundle/ (not tracked).
#
#   bash benchmarks/gpu_bundle.sh            # then carry benchmarks/gpu_bundle with the call
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
B=benchmarks/gpu_bundle
rm -rf "$B" && mkdir -p "$B/wheels"
# AHSN, clean + 15/20/40 dB, the demo corpus: ~3.3k spectrograms, ~30 MB.
$PY -m serwild build --config configs/demo.yaml out="$B/build" >&2
# Packages serwild imports that a CUDA torch image may not have (numpy/pillow come with torchvision).
cat > "$B/requirements.txt" <<'REQ'
webdataset
braceexpand
pyyaml
tqdm
scikit-learn
scipy
joblib
threadpoolctl
matplotlib
soundfile
librosa
REQ
# --only-binary: wheels for CPython 3.11 on manylinux x86_64 (match the GPU machine's python).
$PY -m pip download -q --only-binary=:all: --no-deps -d "$B/wheels" $(grep -v '^#' "$B/requirements.txt") \
    contourpy cycler fonttools kiwisolver pyparsing python-dateutil six packaging numba llvmlite soxr \
    audioread lazy_loader pooch decorator msgpack cffi pycparser platformdirs requests 2>&1 | tail -3 || true
du -sh "$B" "$B"/* >&2
size=$(du -sm "$B" | cut -f1)
if (( size > 62 )); then
  echo "bundle is ${size} MiB, over what one call carries: drop the largest wheels the GPU machine already has" >&2
  ls -S "$B/wheels" | head -5 >&2
  exit 1
fi
echo "bundle ready: $B (${size} MiB)"
