# The two commands a new user needs:
#   make demo   set up .venv and run the end-to-end demo on the built-in synthetic corpus
#   make test   set up .venv and run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned: on this machine pip takes these from local disk (a CUDA build that
# also runs on CPU); elsewhere override, e.g. make TORCH="torch torchvision" test
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup chromium demo test test-fast lint bench clean

setup: $(VENV)/.installed

# The last step fills librosa's numba cache (its kernels compile on first import and first use,
# ~18 s of CPU, into a cache beside its code): the first build's processes, its Ray workers and
# the test suite's processes then load it, instead of each compiling it and writing it at once.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -c "import numpy as np, librosa; y = np.random.default_rng(0).standard_normal(16000).astype(np.float32); librosa.istft(librosa.stft(y)); librosa.yin(y, fmin=60, fmax=500, sr=16000)"
	@$(MAKE) --no-print-directory chromium
	touch $@

# The browser test of serwild serve drives Debian's Chromium through Playwright (the dev extra;
# Playwright's own browser download is not used). Installed only where it can be: as root, with apt.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
	    || echo "make setup: apt-get install chromium failed: the browser test of serwild serve will skip"; \
	else echo "make setup: no /usr/bin/chromium (install it as root: apt-get install chromium): the browser test of serwild serve will skip"; fi

demo: setup
	$(BIN)/serwild demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q

# The development loop: skips the end-to-end tests marked slow (Ray, torchrun, the demo).
test-fast: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/bench_render.py
	$(BIN)/python benchmarks/bench_build.py
	$(BIN)/python benchmarks/bench_input.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_bootstrap.py

clean:
	rm -rf corpora runs shards/demo shards/tiny demo-out
