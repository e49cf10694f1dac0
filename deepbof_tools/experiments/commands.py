"""The command lines of the chain's tools, written once for the demo and the sweeps.

Each function returns an argv whose first element is a ``deepbof-*`` console-script
name; the runner resolves it to this environment's script. ``deepbof-demo`` strings
them into a linear chain and ``deepbof-experiment`` into a DAG that shares stages, so
a stage run by both is the same command in both.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

Command = Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class DataSource:
  """Where the clips come from.

  Args:
    manifest: a manifest for ``deepbof-preprocess``; None builds the demo corpus.
    manifest_format: "csv" or "mtt".
    audio_root: directory of the audio files the manifest names.
  """

  manifest: Optional[str] = None
  manifest_format: str = "csv"
  audio_root: str = ""


def local_beam_runner(num_workers: int) -> Command:
  """Beam options of a local run with ``num_workers`` worker processes."""
  return ("--runner=DirectRunner", f"--direct_num_workers={num_workers}",
          "--direct_running_mode=multi_processing")


def demo_corpus(output_dir: str, *, num_clips: int, clip_seconds: float, seed: int,
                num_workers: int) -> Command:
  """``deepbof-make-demo-corpus`` into ``output_dir``."""
  return ("deepbof-make-demo-corpus", f"--output_dir={output_dir}",
          f"--num_clips={num_clips}", f"--clip_seconds={clip_seconds:g}", f"--seed={seed}",
          f"--num_workers={num_workers}")


def preprocess(source: DataSource, output_dir: str, *, sampling: str, block_frames: int,
               num_blocks: int, seed: int, num_workers: int,
               extra: Sequence[str] = ()) -> Command:
  """``deepbof-preprocess`` of ``source`` into ``output_dir`` (overwriting it).

  The local multi-process runner is added unless ``extra`` picks a runner (Dataflow).
  """
  runner = () if any(a.startswith("--runner") for a in extra) else local_beam_runner(
      num_workers)
  return ("deepbof-preprocess", f"--manifest={source.manifest}",
          f"--manifest_format={source.manifest_format}", f"--audio_root={source.audio_root}",
          f"--output_dir={output_dir}", f"--sampling={sampling}",
          f"--block_frames={block_frames}", f"--num_blocks={num_blocks}", f"--seed={seed}",
          "--overwrite", *runner, *extra)


def train(data_dir: str, model_dir: str, *, stages: str, preset: str, seed: int,
          flags: Sequence[str] = (), extra: Sequence[str] = ()) -> Command:
  """``deepbof-train`` of ``stages`` with a preset, a seed and convenience flags."""
  return ("deepbof-train", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
          f"--stages={stages}", f"--preset={preset}", f"--seed={seed}", *flags,
          "--overwrite", *extra)


def evaluate(data_dir: str, model_dir: str, split: str = "test") -> Command:
  """``deepbof-evaluate`` of a model on one split (writes ``metrics.json``)."""
  return ("deepbof-evaluate", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
          f"--split={split}")


def baseline(source: DataSource, output: str, *, seed: int, num_workers: int,
             top_n_tags: int) -> Command:
  """``deepbof-baseline`` (MFCC statistics + logistic regression) writing ``output``."""
  return ("deepbof-baseline", f"--manifest_format={source.manifest_format}",
          f"--manifest={source.manifest}", f"--audio_root={source.audio_root}",
          f"--top_n_tags={top_n_tags}", f"--seed={seed}", f"--num_workers={num_workers}",
          f"--output={output}")


def export(model_dir: str, export_dir: str, version: int = 1) -> Command:
  """``deepbof-export`` of a trained model as version ``version`` of ``export_dir``."""
  return ("deepbof-export", f"--model_dir={model_dir}", f"--export_dir={export_dir}",
          f"--version={version}")


def tag(export_dir: str, files: Sequence[str], top_k: int = 5) -> Command:
  """``deepbof-tag`` of ``files`` with an export, as a table on stdout."""
  return ("deepbof-tag", f"--model={export_dir}", f"--top_k={top_k}", "--output=table",
          "--noprogress", *files)
