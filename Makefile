# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv with the machine's python3 when it is missing, (re)installs
# the package with its test extras when setup.py is newer than the last install,
# then runs. `make clean` removes .venv to start from scratch.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
DEMO_ROOT ?= demo

.PHONY: venv test test-fast demo lint bench clean

$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

demo: $(STAMP)
	$(VENV)/bin/textclf demo --root $(DEMO_ROOT)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
