# Two commands on a fresh machine (each creates the environment first if it is missing):
#   make notebooks   execute the notebooks in order on the embedded shapes-world model; writes figures/
#   make test        run every check: ruff, the library's tests and the notebooks under nbval
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export TRANSFORMERS_VERBOSITY := error
export PYTHONHASHSEED := 0

.PHONY: env notebooks test

env: $(VENV)/.installed

# torch is pinned first so that nothing can pull a multi-GB CUDA build in its place
$(VENV)/.installed: pyproject.toml tools/lab_settings.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(PY) tools/lab_settings.py >/dev/null
	touch $@

notebooks: env
	$(PY) tools/run_notebooks.py

# ruff (lint + format) first: it takes a second and names the file and line. pytest then runs on WORKERS
# processes of one thread each (pytest-xdist; the CI machine has two cores); --dist loadscope keeps a notebook's
# cells, which share one kernel, and a test file's module fixtures on one worker, and files start in collection
# order (not fewest tests last), so the browser test, the longest file, starts early instead of running alone at
# the end. One thread per process, notebook kernels included: more threads than cores make torch's thread pools
# wait on each other many times over
WORKERS ?= 2
test: env
	$(VENV)/bin/ruff check reprolib tests benchmarks tools
	$(VENV)/bin/ruff format --check reprolib tests benchmarks tools
	$(PY) tools/fetch_clip_vocab.py || echo "no CLIP BPE vocabulary: the tests that need it will skip"
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(WORKERS) --dist loadscope --no-loadscope-reorder tests notebooks --nbval-lax \
	  --sanitize-with notebooks/sanitize.cfg
