"""The catalogue and tagging tools answer --help without importing TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# console script → (module, function), as setup.cfg declares them
LIGHT_TOOLS = {
    "deepbof-tag": ("serving.tag", "run"),
    "deepbof-tag-catalog": ("beam_jobs.tag_catalog", "console_main"),
    "deepbof-preprocess": ("beam_jobs.preprocess", "console_main"),
    "deepbof-similar": ("serving.similar", "run"),
    "deepbof-export": ("serving.export", "run"),
}


@pytest.mark.parametrize("tool", sorted(LIGHT_TOOLS))
def test_help_does_not_import_tensorflow(tool):
  module, function = LIGHT_TOOLS[tool]
  code = (f"import sys; sys.argv = [{tool!r}, '--help']\n"
          f"from {module} import {function}\n"
          f"try:\n  {function}()\nexcept SystemExit as stop:\n  code = stop.code\n"
          "print('exit', code, 'tensorflow', 'tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=120)
  assert out.stdout.strip().splitlines()[-1] == "exit 0 tensorflow False", out.stderr[-2000:]
  assert "--" in out.stdout  # the flags were listed


def test_setup_cfg_declares_these_entry_points():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "setup.cfg")) as f:
    text = f.read()
  for tool, (module, function) in LIGHT_TOOLS.items():
    assert f"{tool} = {module}:{function}" in text
