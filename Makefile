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

# The native kernels (deepbof_tf/native/build.py): pip builds _cd1, then build.py builds
# the fused front-end op and checks both. A kernel that does not build is reported and the
# TensorFlow path runs instead, except in strict mode (CI=true or DEEPBOF_REQUIRE_NATIVE=1,
# as .ci/run sets), where the build stops here with the compiler's output.
NATIVE_SOURCES := $(wildcard deepbof_tf/native/*.c deepbof_tf/native/*.h) \
                  deepbof_tf/native/build.py

$(STAMP): setup.cfg setup.py pyproject.toml $(NATIVE_SOURCES) | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,demo]'
	$(PY) -m deepbof_tf.native.build
	touch $(STAMP)

install: $(STAMP)

# tests/test_native_build.py fails in strict mode when a native kernel did not build.
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
