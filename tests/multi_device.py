"""Runs test code on N logical CPU devices in a fresh Python process.

Logical devices must be configured before TensorFlow initialises its devices, and the
collective ops of MirroredStrategies over different device counts cannot share one
process; so every multi-device check runs as a script in its own process, started by
``run_on_logical_cpus``. The process gets ``DEEPBOF_LOGICAL_CPUS=N`` and applies it
first (``deepbof_tf.training.distribute.split_cpu_from_environment``, the switch
``deepbof-train`` reads), with the repository and ``tests/`` on its path.
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")

_PRELUDE = """\
from deepbof_tf.training import distribute as _distribute
_distribute.split_cpu_from_environment()
"""


def environment(devices: int) -> dict:
  """The environment of a process that runs on ``devices`` logical CPUs, quietly."""
  return dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3",
              PYTHONPATH=os.pathsep.join([REPO, TESTS]),
              DEEPBOF_LOGICAL_CPUS=str(devices))


def run_on_logical_cpus(script: str, devices: int, *args: str, timeout: int = 300,
                        check: bool = True) -> subprocess.CompletedProcess:
  """Runs ``script`` (Python source; ``sys.argv[1:]`` = ``args``) on ``devices`` CPUs.

  Args:
    script: the code to run after the CPU is split.
    devices: logical CPU devices of the process.
    *args: its command-line arguments.
    timeout: seconds before the process is killed.
    check: assert a zero exit status (showing the end of stderr otherwise).
  """
  result = subprocess.run([sys.executable, "-c", _PRELUDE + script, *map(str, args)],
                          cwd=REPO, env=environment(devices), capture_output=True,
                          text=True, timeout=timeout)
  if check:
    assert result.returncode == 0, result.stderr[-4000:]
  return result


def run_command(command, devices: int, timeout: int = 600) -> subprocess.CompletedProcess:
  """Runs a command line (e.g. ``deepbof-train``) with ``DEEPBOF_LOGICAL_CPUS=devices``."""
  return subprocess.run(command, cwd=REPO, env=environment(devices), capture_output=True,
                        text=True, timeout=timeout)
