# Two commands on a fresh machine (each creates the environment first if it is missing):
#   make notebooks   execute the notebooks in order on the embedded shapes-world model; writes figures/
#   make test        run every test: the library's tests and the notebooks under nbval
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export TRANSFORMERS_VERBOSITY := error
export PYTHONHASHSEED := 0

.PHONY: env notebooks test

env: $(VENV)/.installed

# torch is pinned first so that nothing can pull a multi-GB CUDA build in its place
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

notebooks: env
	$(PY) -m reprolib.notebooks

test: env
	$(PY) -m pytest -q tests notebooks --nbval-lax --sanitize-with notebooks/sanitize.cfg
