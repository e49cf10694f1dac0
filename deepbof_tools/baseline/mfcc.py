"""A reference baseline: per-tag logistic regression on MFCC statistics.

The classic bag-of-frames baseline of music auto-tagging, kept deliberately simple so
that it says how *audible* a dataset's tags are, and so that the Deep-BoF model can be
compared with it on the same split:

* :func:`mfcc_statistics`: 20 MFCCs (librosa, at a common sample rate) and their
  deltas, mean and standard deviation over time → an 80-d vector per clip;
* :func:`logistic_regression_baseline`: standardisation fitted on the training clips,
  one seeded ``sklearn.linear_model.LogisticRegression`` per tag (one-vs-rest);
* :func:`run_baseline`: all of it from a manifest and an audio root, scored with the
  paper's metrics (``deepbof_tf.metrics.tagging_metrics``: AUC-T, AUC-C, P@K, PR-AUC;
  single-class tags/clips excluded and counted);
  :func:`run_mfcc_baseline` reads the manifest file and returns them JSON-ready.

  deepbof-baseline --manifest=annotations_final.csv --manifest_format=mtt \\
      --audio_root=mtt/mp3 [--top_n_tags=50] [--eval_split=test] [--output=FILE.json]
"""

from __future__ import annotations

from deepbof_tf import cli as _cli

# As a command line (deepbof-baseline, python -m): quiet before TensorFlow loads.
if __name__ == "__main__":
  _cli.quiet_startup()
else:
  _cli.quiet_console_script()

import dataclasses
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

BASELINE_SAMPLE_RATE = 22050
N_MFCC = 20


def mfcc_statistics(waveform: np.ndarray, sample_rate: int, *, n_mfcc: int = N_MFCC,
                    feature_sample_rate: int = BASELINE_SAMPLE_RATE) -> np.ndarray:
  """Mean and standard deviation over time of MFCCs and their deltas.

  The waveform is first resampled to ``feature_sample_rate`` so that clips stored at
  different rates get the same mel filterbank (librosa's defaults: 2048-sample FFT,
  512-sample hop, 128 mel bands up to Nyquist).

  Args:
    waveform: mono waveform, shape [n_samples] (float).
    sample_rate: its sample rate in Hz.
    n_mfcc: number of MFCCs.
    feature_sample_rate: the common analysis rate.

  Returns:
    float32 vector of length ``4 * n_mfcc``: [mean(mfcc), std(mfcc), mean(delta),
    std(delta)].

  Raises:
    ValueError: if the waveform is not 1-D, empty or not finite.
  """
  import librosa
  y = np.asarray(waveform, dtype=np.float32)
  if y.ndim != 1:
    raise ValueError(f"mfcc_statistics expects a mono 1-D waveform, got shape {y.shape}")
  if y.size == 0 or not np.all(np.isfinite(y)):
    raise ValueError("mfcc_statistics: empty or non-finite waveform")
  if int(sample_rate) != int(feature_sample_rate):
    y = librosa.resample(y, orig_sr=int(sample_rate), target_sr=int(feature_sample_rate))
  mfcc = librosa.feature.mfcc(y=y, sr=int(feature_sample_rate), n_mfcc=n_mfcc)
  width = min(9, mfcc.shape[1] - (1 - mfcc.shape[1] % 2))
  if width >= 3:
    delta = librosa.feature.delta(mfcc, width=width)
  else:  # a clip of a few frames: no slope to estimate
    delta = np.zeros_like(mfcc)
  return np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1),
                         delta.mean(axis=1), delta.std(axis=1)]).astype(np.float32)


def logistic_regression_baseline(features_train: np.ndarray, labels_train: np.ndarray,
                                 features_test: np.ndarray, *, c: float = 1.0,
                                 seed: int = 0, max_iter: int = 2000) -> np.ndarray:
  """Per-tag (one-vs-rest) logistic regression on standardised features.

  Args:
    features_train: [n_train, n_features].
    labels_train: [n_train, n_tags] multi-hot (0/1).
    features_test: [n_test, n_features].
    c: inverse L2 regularisation strength of ``LogisticRegression``.
    seed: ``random_state`` of every classifier.
    max_iter: solver iterations.

  Returns:
    Scores [n_test, n_tags]: the positive-class probability per tag. A tag with a
    single class in the training labels gets that class as a constant score (there
    is nothing to learn; its AUC is then 0.5 where defined).

  Raises:
    ValueError: on mismatched shapes.
  """
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler
  x_train = np.asarray(features_train, dtype=np.float64)
  y_train = np.asarray(labels_train)
  x_test = np.asarray(features_test, dtype=np.float64)
  if y_train.ndim != 2 or x_train.ndim != 2 or x_test.ndim != 2:
    raise ValueError("features must be [n, d] and labels [n, n_tags], got "
                     f"{x_train.shape}, {y_train.shape}, {x_test.shape}")
  if x_train.shape[0] != y_train.shape[0] or x_train.shape[1] != x_test.shape[1]:
    raise ValueError(f"shape mismatch: train features {x_train.shape}, labels "
                     f"{y_train.shape}, test features {x_test.shape}")
  scaler = StandardScaler().fit(x_train)
  x_train = scaler.transform(x_train)
  x_test = scaler.transform(x_test)
  scores = np.zeros((x_test.shape[0], y_train.shape[1]), dtype=np.float64)
  for k in range(y_train.shape[1]):
    y = (y_train[:, k] > 0.5).astype(int)
    if y.min() == y.max():
      scores[:, k] = float(y[0])
      continue
    model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    model.fit(x_train, y)
    scores[:, k] = model.predict_proba(x_test)[:, 1]
  return scores


def decode_with_soundfile(path: str) -> Tuple[np.ndarray, int]:
  """Mono waveform (channel mean) and native sample rate, decoded by libsndfile."""
  import soundfile as sf
  audio, rate = sf.read(path, dtype="float32", always_2d=True)
  return audio.mean(axis=1), int(rate)


def decode_with_project(path: str) -> Tuple[np.ndarray, int]:
  """Mono waveform at :data:`BASELINE_SAMPLE_RATE` from ``deepbof_tf.audio.load_audio``,
  the decoder of the Deep-BoF pipeline (so both see the same samples)."""
  from deepbof_tf import audio as audio_lib
  waveform = audio_lib.load_audio(path, sample_rate=BASELINE_SAMPLE_RATE)
  return np.asarray(waveform, dtype=np.float32).reshape(-1), BASELINE_SAMPLE_RATE


def default_decoder() -> Callable[[str], Tuple[np.ndarray, int]]:
  """The project's decoder (:func:`decode_with_project`) if ``deepbof_tf.audio`` is
  importable, else :func:`decode_with_soundfile`. Both are module-level functions, so
  they can be sent to worker processes."""
  try:
    from deepbof_tf import audio as audio_lib
  except ImportError:
    return decode_with_soundfile
  return decode_with_project if hasattr(audio_lib, "load_audio") else decode_with_soundfile


def _features_of(args: Tuple[str, Optional[Callable[[str], Tuple[np.ndarray, int]]]]
                 ) -> np.ndarray:
  path, decoder = args
  waveform, rate = decoder(path)
  return mfcc_statistics(waveform, rate)


@dataclasses.dataclass
class BaselineResult:
  """What :func:`run_baseline` measured.

  Args:
    metrics: ``deepbof_tf.metrics.tagging_metrics`` of the evaluation split (``auc_tag``,
      ``auc_clip``, ``p_at_k``, ``pr_auc``, ``per_tag``, exclusion counts).
    tags: the tag vocabulary (label columns).
    n_train: training clips.
    n_eval: evaluated clips.
    eval_split: the evaluated split.
  """

  metrics: Dict[str, object]
  tags: List[str]
  n_train: int
  n_eval: int
  eval_split: str


def run_baseline(manifest, audio_root: str, *, eval_split: str = "test", seed: int = 0,
                 decoder: Optional[Callable[[str], Tuple[np.ndarray, int]]] = None,
                 num_workers: int = 1) -> BaselineResult:
  """MFCC statistics + per-tag logistic regression, trained on ``train``, evaluated on
  ``eval_split`` of a manifest.

  Args:
    manifest: a ``deepbof_tf.data.manifests.Manifest`` (entries with path, split, tags;
      ordered vocabulary in ``tags``).
    audio_root: folder the manifest's relative paths are relative to.
    eval_split: "test" (default) or "valid".
    seed: classifier seed.
    decoder: ``path -> (mono waveform, sample rate)``, a module-level function when
      ``num_workers > 1``; default :func:`default_decoder` ().
    num_workers: processes for decoding and feature extraction (<= 1: in-process).

  Returns:
    The :class:`BaselineResult`.

  Raises:
    ValueError: if the training or evaluation split is empty.
  """
  tags = list(manifest.tags)
  index = {t: i for i, t in enumerate(tags)}
  decoder = decoder or default_decoder()

  def gather(split):
    entries = [e for e in manifest.entries if e.split == split]
    labels = np.zeros((len(entries), len(tags)), dtype=np.float32)
    for row, entry in enumerate(entries):
      for tag in entry.tags:
        labels[row, index[tag]] = 1.0
    paths = [e.path if os.path.isabs(e.path) or "://" in e.path
             else os.path.join(audio_root, e.path) for e in entries]
    return paths, labels

  train_paths, train_labels = gather("train")
  eval_paths, eval_labels = gather(eval_split)
  if not train_paths or not eval_paths:
    raise ValueError(f"manifest has {len(train_paths)} train and {len(eval_paths)} "
                     f"{eval_split} clips; the baseline needs both")
  jobs = [(p, decoder) for p in train_paths + eval_paths]
  if num_workers > 1:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(num_workers,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
      features = list(pool.map(_features_of, jobs, chunksize=8))
  else:
    features = [_features_of(job) for job in jobs]
  features = np.stack(features)
  x_train, x_eval = features[:len(train_paths)], features[len(train_paths):]
  scores = logistic_regression_baseline(x_train, train_labels, x_eval, seed=seed)
  from deepbof_tf import metrics as metrics_lib
  result = metrics_lib.tagging_metrics(eval_labels, scores, tags)
  logging.info("baseline: AUC-tag %.4f over %d tags (%d excluded) on %d %s clips",
               result["auc_tag"], len(tags) - result["num_tags_excluded"],
               result["num_tags_excluded"], len(eval_paths), eval_split)
  return BaselineResult(metrics=result, tags=tags, n_train=len(train_paths),
                        n_eval=len(eval_paths), eval_split=eval_split)


def run_mfcc_baseline(manifest_path: str, audio_root: str, *, manifest_format: str = "csv",
                      top_n_tags: int = 0, eval_split: str = "test", seed: int = 0,
                      num_workers: int = 2) -> Dict[str, object]:
  """:func:`run_baseline` from a manifest file, as a JSON-ready dictionary.

  Args:
    manifest_path: ``manifest.csv`` or MagnaTagATune ``annotations_final.csv``.
    audio_root: folder the manifest's paths are relative to.
    manifest_format: "csv" or "mtt" (see ``deepbof_tf.data.manifests.read_manifest``).
    top_n_tags: keep this many of the most frequent tags (0: all).
    eval_split: the evaluated split.
    seed: classifier seed.
    num_workers: processes for decoding and MFCCs.

  Returns:
    The metrics of ``deepbof_tf.metrics.tagging_metrics`` plus ``n_train``, ``n_eval``,
    ``eval_split`` and ``tags``.
  """
  from deepbof_tf.data import manifests
  manifest = manifests.read_manifest(manifest_path, manifest_format, top_n_tags=top_n_tags)
  result = run_baseline(manifest, audio_root, eval_split=eval_split, seed=seed,
                        num_workers=num_workers)
  return dict(result.metrics, n_train=result.n_train, n_eval=result.n_eval,
              eval_split=eval_split, tags=result.tags)


def _define_flags() -> None:
  from absl import flags
  from deepbof_tf.data import manifests
  flags.DEFINE_string("manifest", None, "manifest.csv (path,split,tags) or MagnaTagATune "
                      "annotations_final.csv.")
  flags.DEFINE_enum("manifest_format", "csv", ["csv", "mtt"], "Manifest format.")
  flags.DEFINE_string("audio_root", None, "Folder the manifest's paths are relative to.")
  flags.DEFINE_integer("top_n_tags", manifests.DEFAULT_TOP_N_TAGS, "Keep the N most "
                       "frequent tags (0: all), as deepbof-preprocess does.")
  flags.DEFINE_enum("eval_split", "test", ["valid", "test"], "Split the metrics are on.")
  flags.DEFINE_integer("seed", 0, "Seed of the logistic regressions.")
  flags.DEFINE_integer("num_workers", 2, "Decoding processes.")
  flags.DEFINE_string("output", None, "Write the metrics as JSON here.")
  flags.mark_flags_as_required(["manifest", "audio_root"])


def main(argv: Sequence[str]) -> None:
  """``deepbof-baseline``: the MFCC baseline of a manifest, printed as a table row."""
  from absl import app, flags
  from deepbof_tf.io_utils import write_json
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  values = flags.FLAGS
  result = run_mfcc_baseline(values.manifest, values.audio_root,
                             manifest_format=values.manifest_format,
                             top_n_tags=values.top_n_tags, eval_split=values.eval_split,
                             seed=values.seed, num_workers=values.num_workers)
  if values.output:
    write_json(values.output, result)
  columns = ("auc_tag", "auc_clip", "p_at_3", "p_at_6", "p_at_9", "p_at_12", "p_at_15",
             "pr_auc")
  print("\t".join(columns))
  print("\t".join(f"{result[c]:.3f}" for c in columns))


def run() -> None:
  """Console-script entry point ``deepbof-baseline``."""
  from deepbof_tf import cli
  cli.run_console_script(main, _define_flags, __doc__)


if __name__ == "__main__":
  run()
