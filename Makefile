# Two entry points for a fresh machine (see README):
#   make train   -- set up .venv and train the default recipe (elu-seed on CIFAR-100, downloading the data)
#   make test    -- set up .venv and run the linter and the test suite
# Pass options through ARGS, e.g.  make train ARGS="--data-dir ~/Downloads/cifar-100-python.tar.gz"

PYTHON ?= python3
VENV ?= .venv
# The CPU build of PyTorch. On a CUDA machine use e.g. TORCH_SPEC="torch>=2.4" to get the default (CUDA) wheel.
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.PHONY: setup train test lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

train: setup
	$(VENV)/bin/cifarkit train $(ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

test: lint
	$(VENV)/bin/python -m pytest $(ARGS)
