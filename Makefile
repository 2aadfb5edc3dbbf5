# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv with the machine's python3 when it is missing, (re)installs
# the package with its test extras, every dependency at its requirements.lock pin,
# when setup.py or requirements.lock is newer than the last install, then runs.
# `make test` runs the suite on two pytest-xdist workers, each test file whole on one
# (module fixtures built once), and prints the 25 slowest tests.
# `make clean` removes .venv to start from scratch. `make lock` refreshes
# requirements.lock from setup.py (README.md, "Dependencies and the lock file").
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
DEMO_ROOT ?= demo
LOCK := requirements.lock
UV_VERSION := 0.13.8
# Extra `uv pip compile` flags for `make lock`, e.g. LOCK_FLAGS=--upgrade (every package to its
# newest allowed release) or LOCK_FLAGS='--upgrade-package grpcio'; by default the pins already
# in the lock are kept wherever setup.py still allows them.
LOCK_FLAGS ?=

.PHONY: venv test test-fast demo lint bench clean lock

$(STAMP): setup.py $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25 tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

demo: $(STAMP)
	$(VENV)/bin/textclf demo --root $(DEMO_ROOT)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# uv lives in a throwaway venv, never in .venv: it refreshes the lock and is no dependency.
# The lock is for CPython 3.11 on x86-64 Linux (the images' platform) and covers
# install_requires plus the test and bench extras.
lock:
	@tmp=$$(mktemp -d) \
	  && $(PYTHON) -m venv $$tmp \
	  && $$tmp/bin/python -m pip install --quiet uv==$(UV_VERSION) \
	  && $$tmp/bin/uv pip compile setup.py --extra test --extra bench \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	    --custom-compile-command 'make lock' $(LOCK_FLAGS) --output-file $(LOCK); \
	  status=$$?; rm -rf $$tmp; exit $$status

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
