# The commands of the README. Each creates .venv if it is missing, installs the
# package with its dev and demo extras (only when setup.cfg/pyproject.toml changed), then runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_out
PYTEST_ARGS ?=
# e.g. make bench BENCH_ARGS="--quick --only=frontend,serving" (see benchmarks/run_all.py)
BENCH_ARGS ?=

.PHONY: install test demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=64" wheel

$(STAMP): setup.cfg setup.py pyproject.toml deepbof_tf/native/_cd1.c | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,demo]'
	@# The fused front-end kernel (optional; otherwise built on first use).
	$(PY) -m deepbof_tf.native.frontend_op > /dev/null || echo "fused front-end kernel not built"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/deepbof-demo --output_dir=$(DEMO_DIR)

# Every benchmarks/bench_*.py, one after another; one table of measured / same-run
# reference ratios, written to build/bench/latest.md (+ .json, logs/).
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) build dist *.egg-info .pytest_cache
