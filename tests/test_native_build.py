"""The build of the native kernels (deepbof_tf/native/build.py).

In strict mode (CI=true or DEEPBOF_REQUIRE_NATIVE=1, which .ci/run sets) a kernel that
should build on this platform but did not fails here with the compiler's output, rather
than leaving the library to fall back to its TensorFlow paths unnoticed.
"""

import importlib.util
import os
import shutil

import pytest

from deepbof_tf.native import build

requires_x86_compiler = pytest.mark.skipif(
    not build.should_build() or shutil.which("gcc") is None and shutil.which("cc") is None,
    reason="the native kernels build on x86-64 Linux with AVX2/FMA and a C compiler")


def test_required_native_kernels_are_built():
  if not build.native_required():
    pytest.skip("strict mode is off (set CI=true or DEEPBOF_REQUIRE_NATIVE=1)")
  if not build.should_build():
    pytest.skip("no native kernel is expected on this platform")
  problems = build.problems()
  assert not problems, "\n\n".join(problems)


@pytest.mark.parametrize("variables,expected", [
    ({}, False), ({"CI": "true"}, True), ({"CI": "1"}, True),
    ({"DEEPBOF_REQUIRE_NATIVE": "1"}, True), ({"CI": "true", "DEEPBOF_REQUIRE_NATIVE": "0"},
                                                 False)])
def test_strict_mode_follows_the_environment(monkeypatch, variables, expected):
  monkeypatch.delenv("CI", raising=False)
  monkeypatch.delenv("DEEPBOF_REQUIRE_NATIVE", raising=False)
  for name, value in variables.items():
    monkeypatch.setenv(name, value)
  assert build.native_required() is expected


def test_setup_py_builds_cd1_from_the_listed_sources():
  kwargs = build.cd1_extension_kwargs()
  assert kwargs["name"] == "deepbof_tf.native._cd1"
  project = os.path.dirname(os.path.dirname(build.HERE))
  for path in kwargs["sources"] + kwargs["depends"]:
    assert os.path.exists(os.path.join(project, path)), path
  listed = set(build.CD1_SOURCES) | set(build.CD1_HEADERS)
  on_disk = {name for name in os.listdir(build.HERE)
             if name.endswith((".c", ".h"))}
  assert on_disk == listed  # a new source file must be added to build.py


def test_native_files_stay_short():
  for name in build.CD1_SOURCES + build.CD1_HEADERS + ("frontend_op.cc",):
    with open(os.path.join(build.HERE, name), encoding="utf-8") as f:
      assert sum(1 for _ in f) <= 900, name


@requires_x86_compiler
def test_cd1_compiles_from_source_with_both_paths(tmp_path):
  """A fresh compile of every source, the AVX-512 path included (chosen at run time, so
  it is compiled on every x86-64 build whatever this CPU runs)."""
  library, log = build.compile_cd1(str(tmp_path))
  assert library is not None, log
  spec = importlib.util.spec_from_file_location("_cd1", library)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.supported()
  assert module.isa() in ("avx2", "avx512")


@requires_x86_compiler
def test_a_broken_source_reports_the_compiler_error(tmp_path):
  sources = tmp_path / "src"
  shutil.copytree(build.HERE, sources,
                  ignore=lambda _dir, names: [n for n in names if not n.endswith((".c", ".h"))])
  with open(sources / "cd1_gemm.c", "a", encoding="utf-8") as f:
    f.write("\nint deliberately_broken(void) { return undeclared_name; }\n")
  library, log = build.compile_cd1(str(tmp_path / "out"), source_dir=str(sources))
  assert library is None
  assert "undeclared_name" in log and "error" in log


def test_problems_name_the_kernel_and_carry_the_message(monkeypatch):
  monkeypatch.setattr(build, "should_build", lambda: True)
  monkeypatch.setattr(build, "cd1_problem", lambda: None)
  monkeypatch.setattr(build, "frontend_op_problem",
                      lambda: "the fused front-end kernel (frontend_op.cc) is unavailable: "
                              "g++ failed: error: expected ';'")
  assert build.problems() == ["the fused front-end kernel (frontend_op.cc) is unavailable: "
                              "g++ failed: error: expected ';'"]
  monkeypatch.setenv("DEEPBOF_REQUIRE_NATIVE", "1")
  assert build.main() == 1
  monkeypatch.setenv("DEEPBOF_REQUIRE_NATIVE", "0")
  monkeypatch.delenv("CI", raising=False)
  assert build.main() == 0
