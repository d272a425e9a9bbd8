# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv from requirements.txt when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test test-slow check-instructions lint bench-readme train-reference clean-venv

$(BIN)/edgecxr: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(BIN)/edgecxr

demo: $(BIN)/edgecxr          ## the main job: train -> convert -> bench -> run -> explain, on embedded synthetic data
	$(BIN)/edgecxr demo --out out/demo

test: $(BIN)/edgecxr          ## the default test suite (well under 20 minutes on 2 cores)
	$(BIN)/python -m pytest -q

test-slow: $(BIN)/edgecxr     ## end-to-end runs on ../shared data, aarch64 emulation
	$(BIN)/python -m pytest -q -m slow

check-instructions: $(BIN)/edgecxr  ## instructions per inference under valgrind vs scripts/dev/instruction_baseline.json (fails on +3%)
	$(BIN)/python scripts/dev/instruction_counts.py --check

lint: $(BIN)/edgecxr
	$(BIN)/ruff check edgecxr train convert bench device tests scripts

train-reference: $(BIN)/edgecxr  ## the trained models behind the README tables
	bash scripts/reproduce/train_reference_models.sh ../shared/data/covid-radiography runs

clean-venv:
	rm -rf $(VENV)
