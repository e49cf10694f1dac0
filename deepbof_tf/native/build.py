"""How the package's two native kernels are built: the one place that says so.

* ``_cd1``, the sparse RBM's CD-1 epoch (a C extension; sources :data:`CD1_SOURCES`):
  ``pip install`` (and so ``make install``) builds it through setup.py, which takes its
  sources and flags from :func:`cd1_extension_kwargs` here. It is optional there: where
  it cannot be compiled the install goes on, and ``SparseRBMTrainer`` trains on its
  TensorFlow path.
* ``_frontend_op.so``, ``DeepbofLogMel`` (a TensorFlow custom op, ``frontend_op.cc``):
  it is compiled against the installed TensorFlow's headers and libraries, which an
  isolated ``pip`` build does not have, so :func:`build_frontend_op` compiles it on
  first use (``deepbof_tf.native.frontend_op.load``) into this folder or, where that is
  not writable, ``~/.cache/deepbof``; a stamp with the source's hash, the TensorFlow
  version and the compiler command triggers a rebuild when any of them changes.

``python -m deepbof_tf.native.build`` (run by ``make install``) builds the fused kernel
and checks that ``_cd1`` imports. Normally a kernel that does not build is reported and
the library falls back to TensorFlow. In strict mode (:func:`native_required`: ``CI=true``
or ``DEEPBOF_REQUIRE_NATIVE=1`` in the environment, as ``.ci/run`` sets) a kernel that
should build on this platform (:func:`should_build`: x86-64 Linux with AVX2 and FMA) but
does not is an error: the command exits with status 1, and
``tests/test_native_build.py`` fails, each with the compiler's output.

This module imports neither TensorFlow (until the fused kernel is built) nor the rest of
the package, so setup.py can load it by path.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))

# The C extension's translation units (the parts are described in _cd1module.c).
CD1_SOURCES = ("_cd1module.c", "cd1_random.c", "cd1_avx2.c", "cd1_avx512.c", "cd1_gemm.c",
               "cd1_threads.c", "cd1_epoch.c", "cd1_isa.c")
CD1_HEADERS = ("cd1_common.h", "cd1_epoch.h", "cd1_gemm.h", "cd1_isa.h", "cd1_math.h",
               "cd1_math_simd.h", "cd1_random.h", "cd1_random_simd.h", "cd1_simd.h",
               "cd1_threads.h")
# The ISA of each part is set in its source (#pragma GCC target / target attributes),
# so one set of flags serves every file; the AVX-512 code is compiled on every x86-64
# build and chosen at run time.
CD1_COMPILE_ARGS = ("-O3", "-Wall", "-Wno-unknown-pragmas", "-fvisibility=hidden")
CD1_LINK_ARGS = ("-pthread",)

FRONTEND_OP_SOURCE = os.path.join(HERE, "frontend_op.cc")
FRONTEND_OP_LIBRARY = "_frontend_op.so"
REQUIRED_CPU_FLAGS = ("avx2", "fma")


class FusedFrontendUnavailable(RuntimeError):
  """The fused kernel cannot be built or loaded here (the message says why)."""


def cd1_extension_kwargs(source_dir: str = "deepbof_tf/native",
                         optional: bool = True) -> Dict[str, Any]:
  """The arguments of ``setuptools.Extension`` for ``deepbof_tf.native._cd1``.

  Args:
    source_dir: the folder of the sources as setup.py sees it (relative to the project).
    optional: whether a failed compile lets the install go on (setup.py: yes).

  Returns:
    A dict for ``Extension(**kwargs)``.
  """
  return dict(name="deepbof_tf.native._cd1",
              sources=[f"{source_dir}/{name}" for name in CD1_SOURCES],
              depends=[f"{source_dir}/{name}" for name in CD1_HEADERS],
              extra_compile_args=list(CD1_COMPILE_ARGS),
              extra_link_args=list(CD1_LINK_ARGS), optional=optional)


def native_required() -> bool:
  """Strict mode: ``DEEPBOF_REQUIRE_NATIVE=1``, or ``CI=true`` unless it is set to 0."""
  explicit = os.environ.get("DEEPBOF_REQUIRE_NATIVE", "").strip().lower()
  if explicit:
    return explicit not in ("0", "false", "no")
  return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def cpu_flags() -> Optional[set]:
  """The CPU's feature flags from /proc/cpuinfo, or None where it cannot be read."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("flags"):
          return set(line.split(":", 1)[1].split())
  except OSError:
    return None
  return None


def should_build() -> bool:
  """True where both kernels are expected to build and run: x86-64 Linux, AVX2 + FMA."""
  if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
    return False
  flags = cpu_flags()
  return flags is not None and all(flag in flags for flag in REQUIRED_CPU_FLAGS)


# -- _cd1 ---------------------------------------------------------------------------

_SETUPTOOLS_BUILD = r"""
import json, sys
from setuptools import Distribution, Extension
from setuptools.command.build_ext import build_ext
kwargs, build_lib, build_temp = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
command = build_ext(Distribution({"ext_modules": [Extension(**kwargs)]}))
command.build_lib, command.build_temp, command.force = build_lib, build_temp, True
command.ensure_finalized()
try:
  command.run()
except Exception as error:  # the compiler's own output is already on stderr
  sys.exit(f"{type(error).__name__}: {error}")
"""


def compile_cd1(output_dir: str, source_dir: str = HERE) -> Tuple[Optional[str], str]:
  """Compiles ``_cd1`` as setup.py does (same setuptools step, same flags), not optional.

  Args:
    output_dir: where the library (and the object files, under ``temp/``) go.
    source_dir: the folder with :data:`CD1_SOURCES` (default: this one).

  Returns:
    ``(path of the built library or None, the compiler's output)``.
  """
  kwargs = cd1_extension_kwargs(os.path.abspath(source_dir), optional=False)
  result = subprocess.run(
      [sys.executable, "-c", _SETUPTOOLS_BUILD, json.dumps(kwargs), output_dir,
       os.path.join(output_dir, "temp")], capture_output=True, text=True, check=False)
  log = result.stdout + result.stderr
  suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
  library = os.path.join(output_dir, "deepbof_tf", "native", "_cd1" + suffix)
  if result.returncode != 0 or not os.path.exists(library):
    return None, log
  return library, log


def cd1_problem() -> Optional[str]:
  """Why ``deepbof_tf.native._cd1`` is not usable here, or None when it is.

  Where the import fails and the sources are here, they are compiled into a scratch
  folder so that the message carries the compiler's output.
  """
  try:
    from deepbof_tf.native import _cd1  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    message = f"deepbof_tf.native._cd1 does not import ({error})."
    if not all(os.path.exists(os.path.join(HERE, name)) for name in CD1_SOURCES):
      return message + " Its sources are not installed; reinstall the package."
    with tempfile.TemporaryDirectory(prefix="deepbof-cd1-") as scratch:
      library, log = compile_cd1(scratch)
    if library is None:
      return f"{message} Compiling it failed:\n{log[-6000:]}"
    return (f"{message} Its sources compile (so the install skipped or lost the build): "
            "reinstall with `pip install -e .` or `make install`.")
  if not _cd1.supported():
    return "deepbof_tf.native._cd1 imports but reports that this CPU cannot run it."
  return None


# -- the fused front-end op ------------------------------------------------------------

def _frontend_op_command(tf_module, output: str) -> List[str]:
  include = tf_module.sysconfig.get_include()
  # Hidden visibility: the library's own ducc0 instantiations (built for AVX2) must not
  # bind to, or be bound by, the ones TensorFlow's libraries export.
  return (["g++", "-std=c++17", "-shared", "-fPIC", "-O3", "-mavx2", "-mfma",
           "-ffp-contract=fast", "-fvisibility=hidden", "-fvisibility-inlines-hidden",
           "-w", FRONTEND_OP_SOURCE, "-o", output,
           f"-I{os.path.join(include, 'external', 'ducc', 'src')}",
           f"-I{os.path.join(include, 'external', 'ducc', 'google')}"]
          + list(tf_module.sysconfig.get_compile_flags())
          + list(tf_module.sysconfig.get_link_flags()))


def _frontend_op_stamp(tf_module) -> str:
  """What the build depends on: the source, the TensorFlow version, the command."""
  with open(FRONTEND_OP_SOURCE, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  command = " ".join(_frontend_op_command(tf_module, "OUTPUT"))
  return f"{digest} tensorflow {tf_module.__version__}\n{command}\n"


def _frontend_op_dirs():
  yield HERE
  yield os.path.join(os.path.expanduser("~"), ".cache", "deepbof")


def build_frontend_op(force: bool = False) -> str:
  """Compiles ``frontend_op.cc`` if no up-to-date build exists; returns the library's path.

  Args:
    force: rebuild even when the stamp says the build is current.

  Raises:
    FusedFrontendUnavailable: no AVX2/FMA, no g++, or the compiler failed (its output
      is in the message).
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  flags = cpu_flags()
  if flags is not None and not all(flag in flags for flag in REQUIRED_CPU_FLAGS):
    raise FusedFrontendUnavailable(
        "the fused front-end kernel needs a CPU with AVX2 and FMA; this one has "
        f"{'/'.join(f for f in REQUIRED_CPU_FLAGS if f in flags) or 'neither'}")
  stamp = _frontend_op_stamp(tf)
  errors = []
  for directory in _frontend_op_dirs():
    library = os.path.join(directory, FRONTEND_OP_LIBRARY)
    stamp_path = library + ".stamp"
    if not force and os.path.exists(library) and os.path.exists(stamp_path):
      with open(stamp_path, encoding="utf-8") as f:
        if f.read() == stamp:
          return library
    try:
      os.makedirs(directory, exist_ok=True)
      # Built under a temporary name and renamed: concurrent builders never load a
      # half-written library.
      fd, temporary = tempfile.mkstemp(prefix=".frontend_op-", suffix=".so", dir=directory)
      os.close(fd)
    except OSError as error:
      errors.append(f"{directory}: {error}")
      continue
    try:
      result = subprocess.run(_frontend_op_command(tf, temporary), capture_output=True,
                              text=True, check=False)
    except FileNotFoundError:
      os.unlink(temporary)
      raise FusedFrontendUnavailable("building the fused front-end kernel needs g++, "
                                     "which is not on PATH") from None
    if result.returncode != 0:
      os.unlink(temporary)
      raise FusedFrontendUnavailable(
          f"g++ failed to build {FRONTEND_OP_SOURCE} (exit status {result.returncode}):\n"
          f"{result.stderr[-4000:]}")
    os.replace(temporary, library)
    stamp_temporary = f"{stamp_path}.{os.getpid()}.tmp"
    with open(stamp_temporary, "w", encoding="utf-8") as f:
      f.write(stamp)
    os.replace(stamp_temporary, stamp_path)
    return library
  raise FusedFrontendUnavailable("no writable folder for the fused front-end kernel: "
                                 + "; ".join(errors))


def frontend_op_problem() -> Optional[str]:
  """Why the fused kernel does not build and load here, or None when it does."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    tf.load_op_library(build_frontend_op())  # what frontend_op.load does
  except FusedFrontendUnavailable as error:
    return f"the fused front-end kernel (frontend_op.cc) is unavailable: {error}"
  except tf.errors.NotFoundError as error:
    return f"the fused front-end kernel (frontend_op.cc) does not load: {error.message}"
  return None


def problems() -> List[str]:
  """What is wrong with the kernels that should build here (empty: nothing, or nothing
  is expected on this platform)."""
  if not should_build():
    return []
  return [problem for problem in (cd1_problem(), frontend_op_problem()) if problem]


def main() -> int:
  """Builds the fused kernel and checks ``_cd1``; in strict mode a failure is status 1."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if not should_build():
    print("native kernels: not expected on this platform (they need x86-64 Linux with "
          "AVX2 and FMA); the TensorFlow paths run instead", file=sys.stderr)
    return 0
  found = problems()
  for problem in found:
    print(f"native kernels: {problem}", file=sys.stderr)
  if not found:
    print("native kernels: _cd1 and the fused front-end kernel are built", file=sys.stderr)
    return 0
  if native_required():
    print("native kernels: failing (strict mode: CI=true or DEEPBOF_REQUIRE_NATIVE=1)",
          file=sys.stderr)
    return 1
  print("native kernels: the TensorFlow paths will run instead", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
