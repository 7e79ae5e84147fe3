# Two entry points for a fresh machine (see README):
#   make train   -- set up .venv and train on CIFAR-100 (downloading the data): elu-seed with a GPU, else fast100-cpu
#   make test    -- set up .venv and web/node_modules, run ruff, the TypeScript library tests, the page build, and pytest
# Pass options through ARGS, e.g.  make train ARGS="--data-dir ~/Downloads/cifar-100-python.tar.gz"

PYTHON ?= python3
VENV ?= .venv
# The CPU build of PyTorch. On a CUDA machine use e.g. TORCH_SPEC="torch>=2.4" to get the default (CUDA) wheel.
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.PHONY: setup web train test lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install --quiet -e ".[dev,export]"
	touch $@

setup: $(VENV)/.installed

# ONNXRUNTIME_NODE_INSTALL=skip keeps onnxruntime-node's install script from downloading CUDA files from outside the
# npm registry (its CPU binaries are in the package).
web/node_modules/.installed: web/package.json web/package-lock.json web/packages/classify/package.json web/.npmrc
	cd web && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund
	touch $@

# The TypeScript library (web/packages/classify: build, golden vectors and Node.js tests) and the browser page
# that uses it (type-check, production build in web/dist).
web: web/node_modules/.installed
	cd web && npm test && npm run build

# The main job: the seed's recipe (elu-seed) where a GPU is; without one, fast100-cpu (about 10 minutes on 2
# cores), then the seed recipe's projected time on this machine. Expanded when the recipe runs, after setup.
MAIN_RECIPE = $(shell $(VENV)/bin/python -c "import torch; print('elu-seed' if torch.cuda.is_available() else 'fast100-cpu')")

train: setup
	$(VENV)/bin/cifarkit train --recipe $(MAIN_RECIPE) $(if $(filter fast100-cpu,$(MAIN_RECIPE)),--then-project elu-seed) $(ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts web/scripts

test: lint web
	$(VENV)/bin/python -m pytest $(ARGS)
