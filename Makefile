# Two commands: `make run` (set up, then the whole pipeline on the embedded defaults) and `make test`; `make bench` records the benchmarks.
PYTHON ?= python3
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
OUT ?= runs/demo

.PHONY: setup run test pytest quick lint typecheck bench mutate clean

$(STAMP): pyproject.toml constraints.txt requirements-typecheck.txt requirements-triton.txt
	@echo "setup: creating $(VENV) and installing the pinned packages (torch, onnxruntime, openvino, tritonserver, ray, ...): 1-5 minutes"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install --progress-bar off -c constraints.txt -e '.[export,dev,openvino,stream,serve,cluster]' | awk '/^(Collecting|Successfully)/ { print; fflush() }'
	$(PY) -m pip install -q --no-deps -r requirements-typecheck.txt
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/triton-site -r requirements-triton.txt
	@echo "setup: done"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/edge-inception pipeline -o $(OUT) --force

test: lint typecheck pytest

# Three pytest-xdist workers on 2 cores: much of the suite waits on subprocesses, servers and start-ups; with two workers
# the machine was busy 86 % of the run, with three 97 % (warm cache: 8 min 1 s vs 7 min 15 s of pytest; README,
# "Testing"). Each test file runs whole on one worker (`--dist loadgroup`, the groups of tests/xdist_groups.py), so its
# module fixtures start once; the trained net is built once for all (tests/build_cache.py's lock). PYTEST_WORKERS=0
# runs it serially.
# PYTHONDONTWRITEBYTECODE is cleared for the run (an image may set it): the suite starts some hundreds of Python
# processes (CLI commands, bench workers, servers), and without the checkout's __pycache__ each compiled the package's
# modules afresh, about 0.1 s of CPU apiece.
PYTEST_WORKERS ?= 3
pytest: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

# The edit loop: the tests of what an edit most often breaks (layout and import rules, the pure decision functions,
# preprocessing against torchvision's fixture, the model, checkpoints, verification, bundles' and repositories' trust
# checks), none of which trains, serves, streams or runs the pipeline (QUICK_SKIP: the measured slow ones of these files).
# `make test` still runs everything (README, "Testing").
QUICK_TESTS := tests/test_architecture.py tests/test_decisions.py tests/test_preprocess.py tests/test_candidates.py tests/test_model.py \
	tests/test_verify.py tests/test_weights.py tests/test_reference.py tests/test_review.py tests/test_torchvision_layout.py \
	tests/test_trust.py tests/test_build_cache.py tests/test_shm.py tests/test_ort_reuse.py
QUICK_SKIP := runtime_commands_work_without_pytorch or pipeline_builds_measures or auto_keeps_the_fastest or fixed_batch_variant
quick: $(STAMP)
	$(PY) -m pytest -q $(QUICK_TESTS) -k "not ($(QUICK_SKIP))"

lint: $(STAMP)
	$(VENV)/bin/ruff check edge_inception tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Mutation testing of the pure decision modules with their fast unit tests ([tool.mutmut] in pyproject.toml; README,
# "Testing"). PYTHONPATH is cleared so the tests import mutmut's mutated copy in mutants/, not this checkout.
mutate: $(STAMP)
	rm -rf mutants
	env -u PYTHONPATH $(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/mutmut results

# Re-records every results file (suite, candidates, bench agreement, stream, serve, INT8 verdict) in under 20 minutes on a
# quiet 2-core machine: it waits for a 1-minute load average below 0.5, then starts each script once the rest of the machine
# is idle (benchmarks/record_all.py).
# BENCH_ARGS=--smoke: tiny settings into a scratch folder, no waiting: does every script still run (not figures).
bench: $(STAMP)
	$(PY) benchmarks/record_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) export/output runs mutants .pytest_cache .mypy_cache .ruff_cache
