"""Benchmark: start-up of the command-line tools.

Targets (each the median of ``--runs`` runs, in fresh processes):

* the ``--help`` of ``deepbof-tag``, ``deepbof-tag-catalog``, ``deepbof-preprocess``,
  ``deepbof-similar`` and ``deepbof-export`` answers in < 0.3 of the time
  ``import tensorflow`` takes in the same interpreter (measured in the same run): the
  help text needs neither TensorFlow nor a model (the training tools' ``--help`` is
  reported: they import TensorFlow with their library);
* ``deepbof-similar`` answers a query by a catalogue path in < 0.5 of that time.

Reported next to them: ``deepbof-tag`` on one 30-s clip end to end (TensorFlow, the
SavedModel's load and one tagged file) and ``deepbof-similar`` answering a query by a
catalogue path (no TensorFlow: the stored embedding and the index).

Usage::

  .venv/bin/python benchmarks/bench_startup.py [--runs=3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import List, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import result_line  # noqa: E402  (benchmarks/, the script's own folder)

BIN = os.path.dirname(sys.executable)
# The catalogue and tagging tools answer --help without TensorFlow (the target);
# the training tools still import it with their library (reported, no target).
TOOLS = ("deepbof-tag", "deepbof-tag-catalog", "deepbof-preprocess", "deepbof-similar",
         "deepbof-export")
TRAINING_TOOLS = ("deepbof-train", "deepbof-evaluate")


def _timed(command: Sequence[str], runs: int) -> float:
  """Median wall seconds of ``command`` (which must succeed)."""
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    subprocess.run(list(command), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--runs", type=int, default=3)
  args = parser.parse_args()
  rows: List[dict] = []
  tf_import = _timed([sys.executable, "-c", "import tensorflow"], args.runs)
  bare = _timed([sys.executable, "-c", "pass"], args.runs)
  print(f"python -c pass: {bare:.2f} s; import tensorflow: {tf_import:.2f} s")
  for tool in TOOLS + TRAINING_TOOLS:
    seconds = _timed([os.path.join(BIN, tool), "--help"], args.runs)
    print(f"{tool} --help: {seconds:.2f} s")
    rows.append(result_line.measurement(
        f"{tool} --help", seconds, "s", reference="import tensorflow, same interpreter",
        reference_value=tf_import, target="< 0.3" if tool in TOOLS else None,
        target_on="ratio"))

  root = tempfile.mkdtemp(prefix="bench_startup_")
  try:
    import numpy as np
    import soundfile as sf
    import bench_serving
    from beam_jobs import catalog_runs
    from beam_jobs import tag_catalog_lib
    from serving import export_lib
    model_dir = bench_serving.synthetic_model_dir(os.path.join(root, "model"), 128)
    export_dir = os.path.join(root, "export")
    export_lib.export(model_dir, export_dir)
    audio_dir = os.path.join(root, "audio")
    os.makedirs(audio_dir)
    rng = np.random.default_rng(0)
    for i in range(3):
      sf.write(os.path.join(audio_dir, f"clip{i}.wav"),
               (0.1 * rng.standard_normal(22050 * 30)).astype(np.float32), 22050)
    clip = os.path.join(audio_dir, "clip0.wav")
    tag_seconds = _timed([os.path.join(BIN, "deepbof-tag"), f"--model={export_dir}",
                          "--noprogress", clip], args.runs)
    print(f"deepbof-tag, one 30-s clip: {tag_seconds:.2f} s")
    rows.append(result_line.measurement(
        "deepbof-tag, one 30-s clip, end to end", tag_seconds, "s",
        reference="import tensorflow, same interpreter", reference_value=tf_import))
    catalog = os.path.join(root, "catalog")
    catalog_runs.run(tag_catalog_lib.TagCatalogConfig(
        model=export_dir, input=audio_dir, output_dir=catalog),
        ["--direct_num_workers=1", "--direct_running_mode=in_memory"])
    similar_seconds = _timed([os.path.join(BIN, "deepbof-similar"),
                              f"--catalog_dir={catalog}", f"--query={clip}"], args.runs)
    print(f"deepbof-similar, query by catalogue path: {similar_seconds:.2f} s")
    rows.append(result_line.measurement(
        "deepbof-similar, query by a catalogue path", similar_seconds, "s",
        reference="import tensorflow, same interpreter", reference_value=tf_import,
        target="< 0.5", target_on="ratio"))
  finally:
    shutil.rmtree(root, ignore_errors=True)
  result_line.emit("startup", rows, config={"runs": args.runs})
  return 0


if __name__ == "__main__":
  sys.exit(main())
