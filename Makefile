# The two commands of a fresh clone: `make demo` and `make test` (both install on first use).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: setup demo test test-slow test-gpu bench lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"mangaka needs Python 3.11, not {sys.version.split()[0]}"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

demo: setup
	$(BIN)/mangaka demo

lint: setup
	$(BIN)/ruff check flows tasks models storage tests bench
	$(BIN)/ruff format --check flows tasks models storage tests bench
	$(BIN)/mypy flows tasks models storage

test: lint
	$(BIN)/pytest -m "not slow and not gpu"

test-slow: setup
	$(BIN)/pytest -m "slow"

test-gpu: setup  # on a machine with a CUDA device: nvJPEG decoding, GPU workers
	$(BIN)/pytest -m "gpu"

bench: setup
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.augment
	$(BIN)/python -m bench.pseudolabel
	$(BIN)/python -m bench.gaugan
	$(BIN)/python -m bench.lineart --count 1024
	$(BIN)/python -m bench.lineart --finetune
	$(BIN)/python -m bench.lineart --count 4096
	$(BIN)/python -m bench.lineart --count 4096 --codec raw
	$(BIN)/python -m bench.lineart --count 8192 --varied
	$(BIN)/python -m bench.lineart --quality
	$(BIN)/python -m bench.styles
	$(BIN)/python -m bench.colorizer
	$(BIN)/python -m bench.orchestration
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.report

clean:
	rm -rf $(VENV) .prefect workspace .pytest_cache .mypy_cache .ruff_cache
