"""The Dataflow recipe of docs/usage.md: the wheel it builds holds what a worker imports.

(The same wheel serves both Beam jobs: preprocessing and catalogue tagging.)

A Dataflow worker installs the wheel passed as ``--extra_package`` and unpickles the
pipeline's DoFns, which import the project's modules in ``setup()``. This builds the
wheel exactly as the recipe says (``pip wheel --no-deps -w dist .``), finds it with the
recipe's glob, and checks that every project module a worker of each Beam job imports
(the job's library module, then every DoFn's ``setup()``) is a file of that wheel.

Also, from setup.cfg and the sources alone: every console script names a function of a
packaged module, and the model library (``deepbof_tf``) never imports the tooling beside
it (``deepbof_tools``).
"""

import ast
import configparser
import fnmatch
import json
import os
import re
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_PACKAGES = ("deepbof_tf", "deepbof_tools", "beam_jobs", "trainer", "serving")
RECIPE_GLOB = "deepbof-*.whl"  # --extra_package="$(ls dist/deepbof-*.whl)"

# What a worker of each Beam job runs: the library modules, the DoFns' setup() (those
# that need an export import what loading it imports: deepbof_tf.exported).
_WORKER = r"""
import json, sys
from beam_jobs import preprocess_lib as lib
from beam_jobs import tag_catalog_lib as catalog
from deepbof_tf import exported
from deepbof_tf.config import FrontendConfig, SamplingConfig
lib.ComputeFeaturesDoFn(FrontendConfig()).setup()
lib.SampleBlocksDoFn(SamplingConfig(), 1, 128).setup()
catalog.DecodeAudioDoFn(22050, "first", 1, 1).setup()
catalog.SerializeExampleDoFn().setup()
print(json.dumps(sorted(
    (name, getattr(module, "__file__", None) or "") for name, module in sys.modules.items()
    if name.split(".")[0] in %r)))
"""


def test_every_console_script_names_a_function_of_a_packaged_module():
  setup_cfg = configparser.ConfigParser()
  setup_cfg.read(os.path.join(ROOT, "setup.cfg"))
  packaged = setup_cfg["options.packages.find"]["include"].split()
  lines = setup_cfg["options.entry_points"]["console_scripts"].strip().splitlines()
  scripts = dict(tuple(part.strip() for part in line.split("=")) for line in lines)
  for name, target in scripts.items():
    module, _, function = target.partition(":")
    assert module.split(".")[0] in PROJECT_PACKAGES, (name, target)
    package = module.rpartition(".")[0]
    assert any(fnmatch.fnmatch(package, pattern) for pattern in packaged), (name, target)
    path = os.path.join(ROOT, *module.split(".")) + ".py"
    assert os.path.exists(path), (name, target)
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read())
    assert any(isinstance(node, ast.FunctionDef) and node.name == function
               for node in tree.body), (name, target)
  # The tooling's scripts keep their names, now in deepbof_tools.
  for name in ("deepbof-baseline", "deepbof-make-demo-corpus", "deepbof-demo",
               "deepbof-experiment"):
    assert scripts[name].startswith("deepbof_tools."), scripts[name]


def test_the_model_library_never_imports_the_tools():
  offenders = []
  for directory, _, files in os.walk(os.path.join(ROOT, "deepbof_tf")):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(directory, name)
      with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
      for node in ast.walk(tree):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        offenders += [(os.path.relpath(path, ROOT), n) for n in names
                      if n.split(".")[0] == "deepbof_tools"]
  assert not offenders, offenders


def test_recipe_commands_are_the_ones_tested():
  with open(os.path.join(ROOT, "docs", "usage.md")) as f:
    usage = f.read()
  assert "pip wheel --no-deps -w dist ." in usage
  assert '--extra_package="$(ls dist/deepbof-*.whl)"' in usage


@pytest.mark.slow
def test_the_recipes_wheel_holds_every_module_a_worker_imports(tmp_path):
  dist = tmp_path / "dist"
  build = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
       "-w", str(dist), ROOT], capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert build.returncode == 0, build.stderr[-3000:]
  wheels = [name for name in os.listdir(dist) if fnmatch.fnmatch(name, RECIPE_GLOB)]
  assert len(wheels) == 1, os.listdir(dist)  # the recipe's glob finds exactly one
  # The C extension makes it a platform wheel of this Python (docs/usage.md says so).
  tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
  assert re.fullmatch(rf"deepbof-[\d.]+-{tag}-{tag}-linux_\w+\.whl", wheels[0]), wheels[0]
  with zipfile.ZipFile(dist / wheels[0]) as wheel:
    files = set(wheel.namelist())

  worker = subprocess.run([sys.executable, "-c", _WORKER % (PROJECT_PACKAGES,)],
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert worker.returncode == 0, worker.stderr[-3000:]
  imported = json.loads(worker.stdout.strip().splitlines()[-1])
  assert any(name == "deepbof_tf.frontend" for name, _ in imported)  # setup() ran
  missing = []
  for name, path in imported:
    if not path:
      continue  # a namespace without files
    # The editable install of the tests imports the modules from the source tree.
    relative = os.path.relpath(path, ROOT)
    if relative not in files:
      missing.append((name, relative))
  assert not missing, f"modules a worker imports that the wheel lacks: {missing}"
  # The package data the serving tools read at run time ships too.
  assert any(f.startswith("serving/") and f.endswith(".config") for f in files)
  # The tooling beside the library ships in the same wheel (its console scripts).
  for module in ("deepbof_tools/__init__.py", "deepbof_tools/corpus_config.py",
                 "deepbof_tools/demo/corpus.py", "deepbof_tools/experiments/cli.py",
                 "deepbof_tools/baseline/mfcc.py"):
    assert module in files, module
