PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test test-fast bench lint clean

$(VENV)/.installed-%: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[$*]"
	touch $@

demo: $(VENV)/.installed-all
	$(PY) scripts/make_demo_corpus.py demo/corpus
	$(VENV)/bin/beamvec plan --input 'demo/corpus/*.jsonl' --output demo/out
	$(VENV)/bin/beamvec run --input 'demo/corpus/*.jsonl' --output demo/out --config runner_configs/local.yaml
	$(VENV)/bin/beamvec inspect demo/out
	$(VENV)/bin/beamvec search demo/out "parse a JSON document" -k 5

test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# The tests that run no whole `beamvec run` and no subprocess: a minute or two.
test-fast: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow"

bench: $(VENV)/.installed-test
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo/corpus demo/out build dist *.egg-info src/*.egg-info
