# The README's two commands are `make demo` and `make test`; both install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REQS := requirements.txt requirements-test.txt constraints/lock.txt setup.py
STAMP := $(VENV)/.installed-$(shell cat $(REQS) | sha1sum | cut -c1-12)
RUN_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install demo test test-fast clean-demo

install: $(STAMP)

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt -c constraints/lock.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

demo: install
	$(PY) -m murag.demo --run_dir=$(RUN_DIR)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean-demo:
	rm -rf $(RUN_DIR)
