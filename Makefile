# One command each: `make demo`, `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SCALE ?= quick
OUT ?= results

.PHONY: demo test test-all lint format bench interop clean readme

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	JAX_PLATFORMS=$${JAX_PLATFORMS:-cpu} $(PY) -m experiments run all --scale $(SCALE) --out $(OUT)

# After `make demo`: copy results/ into docs/results/ and regenerate the README's results section from it.
readme: $(VENV)/.installed
	$(PY) -m experiments readme --copy-from $(OUT) --results docs/results --readme README.md

# Two workers: XLA compiles are mostly single-threaded, so the 2-core CI halves its wall time.
test: $(VENV)/.installed
	$(PY) -m pytest -n $${PYTEST_WORKERS:-2} -m "not interop and not slow" tests

# Everything but the verl comparison, including the slow experiment and benchmark smoke runs.
test-all: $(VENV)/.installed
	$(PY) -m pytest -n $${PYTEST_WORKERS:-2} -m "not interop" tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Installs the peers it compares against (verl 0.9.1 and TRL 1.16.0 on torch 2.13.0 CPU: scripts/install_interop.sh; PEERS=0 skips
# that), then writes $(OUT)/bench.json and bench.md. BENCH_ARGS=--quick for the short run.
PEERS ?= 1
BENCH_ARGS ?=
bench: $(VENV)/.installed
	if [ "$(PEERS)" != 0 ]; then VENV=$(VENV) bash scripts/install_interop.sh; fi
	$(PY) -m experiments bench --out $(OUT) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

# Optional: torch (CPU) + the real verl 0.9.1 and TRL 1.16.0, then the flavor="verl" and flavor="trl" checks
# against them (tests/interop: test_verl.py, test_trl.py).
interop: $(VENV)/.installed
	bash scripts/install_interop.sh
	$(PY) -m pytest -m interop tests/interop
