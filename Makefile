# Two entry points that do all the set-up on a fresh machine (see README).
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: install install-test demo test test-all bench

install:
	$(PIP) install -q -r requirements-ci.txt
	$(PIP) install -q -e .

install-test:
	$(PIP) install -q -r requirements-ci.txt
	$(PIP) install -q -e '.[test]'

demo: install
	dermfuse demo --out demo-out

test: install-test
	$(PYTHON) -m pytest -q

bench: install-test
	$(PYTHON) benchmarks/bench_cam.py
	$(PYTHON) benchmarks/bench_train.py
