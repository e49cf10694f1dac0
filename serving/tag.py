r"""``deepbof-tag``: tag audio files of any format, rate and length with an exported model.

Usage::

  deepbof-tag --model=EXPORT_DIR FILE_OR_DIR [FILE_OR_DIR ...] \
      [--top_k=5] [--threshold=0.0] [--output=table|json|csv] \
      [--embedding_out=FILE.npy] [--taggram_out=FILE.jsonl] [--taggram_seconds=10] \
      [--batch_size=16] [--chunk_seconds=30] [--channel_mode=first|mean]

``--model`` is a SavedModel written by ``deepbof-export`` (a version directory, or the
export base directory: its newest version is used). Directories are walked recursively
for audio files (``--extensions``); files named on the command line are always tried.

How a file is tagged (all numbers come from the SavedModel's signatures, i.e. the same
traced ``deepbof_tf`` code and weights TF Serving runs):

1. decoding is client-side: WAV, AIFF, FLAC, Ogg, MP3, AAC/M4A, ALAC, WebM, WMA, AC-3…
   (docs/audio.md) at any sample rate, first channel (or ``--channel_mode=mean``),
   resampled to the model's rate, exactly as ``deepbof_tf.audio.load_audio``. Large
   files are decoded once into a temporary file instead of memory;
2. clips up to ``--chunk_seconds`` are batched (``--batch_size``) through the
   ``serving_padded`` signature;
3. longer recordings are streamed in chunks of about ``--chunk_seconds`` through the
   ``stream_spectrum``/``stream_encode_spectrum`` signatures (two passes: the spectral
   floor needs the whole file's maximum; the first pass's magnitudes are kept for the
   second up to 64 MB) and the pooled windows are combined into exactly the
   one-shot bag-of-features, then ``probabilities_from_embedding`` gives the tags.
   Memory stays bounded (a one-hour file needs < 1 GB);
4. ``--taggram_out`` also writes, per file, tag probabilities over time: the
   bag-of-features of each ``--taggram_seconds`` segment (the mean of its ~1-s
   max-pooling windows, segments aligned to the file start, the last one shorter)
   through the DNN. Every file then takes the streaming path.

Output goes to stdout; progress bar and one ``error:`` line per failed file go to
stderr. The exit code is 1 if any file failed (the others are still tagged).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
from typing import List, Optional, Sequence, Tuple

from absl import app
from absl import flags
import numpy as np

from deepbof_tf import audio
from deepbof_tf import cli
from deepbof_tf import exported
from deepbof_tf.config import DEFAULT_CHUNK_SECONDS, DEFAULT_TAG_BATCH_SIZE

# Every extension either decoder reads (deepbof_tf.audio.AUDIO_EXTENSIONS; the content
# decides how a file is decoded); "*" collects every file and lets the content decide.
DEFAULT_EXTENSIONS = ",".join(audio.AUDIO_EXTENSIONS)
# Above this estimated decoded size (float32 at the native rate, all channels; ~90 s of
# 44.1 kHz stereo) a file is decoded block by block into a spool file instead of in
# memory: whole-file decoding holds several copies of the signal at once.
IN_MEMORY_LIMIT_BYTES = 32 << 20
# Decoded float32 bytes per file byte, by container (16-bit WAV → 2, FLAC ≈ 4,
# 128 kbit/s MP3 or Vorbis ≈ 22 for 44.1 kHz stereo).
_EXPANSION = {"wav": 2.0, "aiff": 2.0, "flac": 4.0, "caf": 4.0}


@dataclasses.dataclass
class FileResult:
  """What ``deepbof-tag`` found for one file."""

  path: str
  duration_seconds: float = 0.0
  probabilities: Optional[np.ndarray] = None
  embedding: Optional[np.ndarray] = None
  taggram_start_seconds: Optional[np.ndarray] = None
  taggram: Optional[np.ndarray] = None
  error: Optional[str] = None


def find_audio_files(inputs: Sequence[str], extensions: Sequence[str]) -> List[str]:
  """Files named in ``inputs`` plus audio files found recursively in directories.

  Args:
    inputs: file or directory paths.
    extensions: lower-case extensions (with the dot) of the audio files to collect
      from directories (``"*"`` among them: every file); files named directly are kept
      whatever their extension.

  Returns:
    Paths in input order, directories' files sorted, without duplicates. A missing
    path is kept, so that it is reported as an error.
  """
  import tensorflow as tf
  found: List[str] = []
  for path in inputs:
    if tf.io.gfile.isdir(path):
      for root, _, names in sorted(tf.io.gfile.walk(path)):
        for name in sorted(names):
          if "*" in extensions or os.path.splitext(name)[1].lower() in extensions:
            found.append(os.path.join(root, name))
    else:
      found.append(path)
  seen = set()
  return [p for p in found if not (p in seen or seen.add(p))]


class ExportedTagger(exported.ExportedModel):
  """Tags waveforms with a ``deepbof-export`` SavedModel (see the module docstring).

  The one-shot and chunked paths are ``deepbof_tf.exported.ExportedModel``'s, shared
  with ``deepbof-tag-catalog`` and ``deepbof-similar``.

  Args:
    model: an export version directory or base directory (newest version).
  """


def estimated_decoded_bytes(path: str) -> float:
  """Rough float32 size of a decoded file, from its size and container."""
  import tensorflow as tf
  with tf.io.gfile.GFile(path, "rb") as f:
    head = f.read(1 << 12)
    size = f.size()
  return size * _EXPANSION.get(audio.detect_format(head, path), 24.0)


def open_waveform(path: str, sample_rate: int, channel_mode: str,
                  in_memory_limit: float = IN_MEMORY_LIMIT_BYTES):
  """Decodes a file to the model's rate: in memory, or spooled when large.

  Small files go through ``deepbof_tf.audio.load_audio``; large ones through
  ``deepbof_tf.streaming.ResampledNativeWaveform`` (decoded once into a temporary file
  when long, resampled range by range: the same verdict and samples, bounded memory).

  Returns:
    A ``deepbof_tf.streaming`` waveform source (close it when done).
  """
  from deepbof_tf import streaming
  try:
    estimate = estimated_decoded_bytes(path)
  except Exception:  # missing/unreadable: load_audio raises the precise error
    estimate = 0.0
  if estimate <= in_memory_limit:
    samples = audio.load_audio(path, sample_rate=sample_rate, channel_mode=channel_mode)
    return streaming.InMemoryWaveform(samples, sample_rate)
  return streaming.ResampledNativeWaveform(path, sample_rate, channel_mode)


def tag_files(tagger: ExportedTagger, paths: Sequence[str],
              batch_size: int = DEFAULT_TAG_BATCH_SIZE,
              chunk_seconds: float = DEFAULT_CHUNK_SECONDS, channel_mode: str = "first",
              taggram_seconds: Optional[float] = None, progress: bool = True,
              in_memory_limit: float = IN_MEMORY_LIMIT_BYTES,
              on_error=None) -> List[FileResult]:
  """Tags every file; a failing file gets ``FileResult.error`` and the rest go on.

  Args:
    tagger: the loaded export.
    paths: audio files.
    batch_size: clips per one-shot batch.
    chunk_seconds: longer recordings are streamed in chunks of about this length.
    channel_mode: ``"first"`` or ``"mean"``.
    taggram_seconds: if set, compute a taggram with segments of this length (every
      file is then streamed).
    progress: show tqdm bars on stderr.
    in_memory_limit: decoded-size bound for in-memory decoding (bytes).
    on_error: called with each failed ``FileResult`` as soon as it fails.

  Returns:
    One result per path, in order.
  """
  from tqdm import tqdm
  results = [FileResult(path=p) for p in paths]
  windows_per_chunk = tagger.windows_per_seconds(chunk_seconds)
  max_one_shot = int(chunk_seconds * tagger.sample_rate)
  pending: List[Tuple[int, np.ndarray]] = []
  bar = tqdm(total=len(paths), unit="file", file=sys.stderr, disable=not progress,
             dynamic_ncols=True)
  chunk_bar = tqdm(total=0, unit="chunk", file=sys.stderr, leave=False,
                   disable=not progress, position=1)

  def fail(index: int, error: BaseException) -> None:
    message = str(error)
    path = results[index].path
    if not message.startswith(path):
      message = f"{path}: {message}"
    results[index].error = message
    results[index].probabilities = results[index].embedding = None
    if on_error is not None:
      on_error(results[index])

  def flush() -> None:
    if not pending:
      return
    try:
      probabilities, embeddings = tagger.tag_waveforms([w for _, w in pending])
      for (index, _), p, e in zip(pending, probabilities, embeddings):
        results[index].probabilities, results[index].embedding = p, e
    except Exception as error:  # pylint: disable=broad-except
      # Attribute the failure: retry one by one so only the bad clip fails.
      for index, waveform in pending:
        try:
          p, e = tagger.tag_batch([waveform])
          results[index].probabilities, results[index].embedding = p[0], e[0]
        except Exception as single:  # pylint: disable=broad-except
          fail(index, _clean(single))
      del error
    bar.update(len(pending))
    pending.clear()

  for index, path in enumerate(paths):
    bar.set_postfix_str(os.path.basename(path)[-40:], refresh=False)
    source = None
    try:
      source = open_waveform(path, tagger.sample_rate, channel_mode, in_memory_limit)
      results[index].duration_seconds = source.num_samples / tagger.sample_rate
      tagger.check_length(source.num_samples, path)
      if taggram_seconds is None and source.num_samples <= max_one_shot:
        pending.append((index, source.read(0, source.num_samples)))
        if len(pending) >= batch_size:
          flush()
        continue
      from deepbof_tf import streaming
      if isinstance(source, streaming.ResampledNativeWaveform):
        # Both passes read every chunk: resample each sample once, not twice.
        native, source = source, None
        try:
          source = streaming.resampled_store(native)
        finally:
          native.close()
      pooled = tagger.pooled_windows(source, windows_per_chunk,
                                     chunk_bar if progress else None)
      embedding = streaming.mean_of_windows([pooled])
      results[index].embedding = embedding
      results[index].probabilities = tagger.probabilities(embedding[None])[0]
      if taggram_seconds is not None:
        per_segment = tagger.windows_per_seconds(taggram_seconds)
        segments = streaming.group_windows(pooled, per_segment)
        results[index].taggram = tagger.probabilities(segments)
        window = tagger.pool_frames * tagger.config.hop_length / tagger.sample_rate
        results[index].taggram_start_seconds = np.arange(len(segments)) * per_segment * window
      bar.update()
    except Exception as error:  # pylint: disable=broad-except
      fail(index, _clean(error))
      bar.update()
    finally:
      if source is not None:
        source.close()
  flush()
  chunk_bar.close()
  bar.close()
  return results


def _clean(error: BaseException) -> BaseException:
  """TensorFlow errors carry graph noise; keep the message a user can act on."""
  import tensorflow as tf
  if isinstance(error, tf.errors.OpError):
    return RuntimeError(audio.short_error(error))
  return error


# --- output ------------------------------------------------------------------------------


top_tags = exported.top_tags


def format_results(results: Sequence[FileResult], tags: Sequence[str], output: str,
                   top_k: int, threshold: float) -> str:
  """Renders the tagged files as ``table``, ``json`` or ``csv`` (failed files skipped)."""
  ok = [r for r in results if r.error is None]
  if output == "json":
    payload = [{"path": r.path, "duration_seconds": round(r.duration_seconds, 3),
                "tags": [{"tag": t, "probability": round(p, 6)}
                         for t, p in top_tags(r.probabilities, tags, top_k, threshold)]}
               for r in ok]
    return json.dumps(payload, indent=2) + "\n"
  if output == "csv":
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "rank", "tag", "probability"])
    for r in ok:
      for rank, (t, p) in enumerate(top_tags(r.probabilities, tags, top_k, threshold), 1):
        writer.writerow([r.path, rank, t, f"{p:.6f}"])
    return buffer.getvalue()
  lines = []
  for r in ok:
    chosen = top_tags(r.probabilities, tags, top_k, threshold)
    text = "  ".join(f"{t} {p:.3f}" for t, p in chosen) or "(no tag above the threshold)"
    lines.append(f"{r.path}\t{r.duration_seconds:.1f}s\t{text}")
  return "".join(line + "\n" for line in lines)


def write_taggrams(path: str, results: Sequence[FileResult], tags: Sequence[str],
                   segment_seconds: float) -> None:
  """One JSON object per tagged file: segment start times and probabilities."""
  import tensorflow as tf
  with tf.io.gfile.GFile(path, "w") as f:
    for r in results:
      if r.error is not None or r.taggram is None:
        continue
      f.write(json.dumps({
          "path": r.path, "segment_seconds": segment_seconds, "tags": list(tags),
          "start_seconds": [round(float(s), 4) for s in r.taggram_start_seconds],
          "probabilities": np.round(r.taggram.astype(np.float64), 6).tolist()}) + "\n")


def write_embeddings(path: str, results: Sequence[FileResult], size: int) -> None:
  """``[n_files, H]`` float32, rows in input order; failed files are NaN rows."""
  import tensorflow as tf
  rows = np.full([len(results), size], np.nan, np.float32)
  for i, r in enumerate(results):
    if r.error is None and r.embedding is not None:
      rows[i] = r.embedding
  buffer = io.BytesIO()
  np.save(buffer, rows)
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())


# --- command line ------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("model", None, "deepbof-export output: a version directory or the "
                      "export base directory (its newest version is used).")
  flags.DEFINE_integer("top_k", 5, "Print at most this many tags per file (0: all).")
  flags.DEFINE_float("threshold", 0.0, "Print only tags with at least this probability.")
  flags.DEFINE_enum("output", "table", ["table", "json", "csv"], "Output format (stdout).")
  flags.DEFINE_string("embedding_out", None, "Write the bag-of-features of every file "
                      "[n_files, H] to this .npy (input order; NaN rows for failures).")
  flags.DEFINE_string("taggram_out", None, "Write per-segment tag probabilities over time "
                      "to this JSON-lines file (one line per file).")
  flags.DEFINE_float("taggram_seconds", 10.0, "Taggram segment length (rounded to whole "
                     "~1-s pooling windows).", lower_bound=0.0)
  flags.DEFINE_integer("batch_size", DEFAULT_TAG_BATCH_SIZE, "Clips per one-shot batch.",
                       lower_bound=1)
  flags.DEFINE_float("chunk_seconds", DEFAULT_CHUNK_SECONDS, "Recordings longer than "
                     "this are streamed in chunks of about this length.", lower_bound=1.0)
  flags.DEFINE_enum("channel_mode", None, list(audio.CHANNEL_MODES), "Multi-channel "
                    "audio: the first channel (the authors' code) or the mean of all "
                    "channels (default: as the model's training data, recorded in the "
                    "export).")
  flags.DEFINE_string("extensions", DEFAULT_EXTENSIONS, "Comma-separated extensions of "
                      "the audio files collected from directories ('*': every file, the "
                      "content decides).")
  flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")


def main(argv: Sequence[str]) -> int:
  inputs = list(argv[1:])
  if not FLAGS.model:
    raise app.UsageError("--model=EXPORT_DIR is required")
  if not inputs:
    raise app.UsageError("give at least one audio file or directory")
  from tqdm import tqdm
  extensions = tuple(e.strip().lower() if e.strip().startswith((".", "*"))
                     else f".{e.strip().lower()}"
                     for e in FLAGS.extensions.split(",") if e.strip())
  paths = find_audio_files(inputs, extensions)
  if not paths:
    print(f"deepbof-tag: error: no audio files ({', '.join(extensions)}) under "
          f"{' '.join(inputs)}", file=sys.stderr)
    return 1
  try:
    tagger = ExportedTagger(FLAGS.model)
  except (OSError, ValueError, KeyError) as error:  # not an export, unreadable, …
    print(f"deepbof-tag: error: cannot load the model {FLAGS.model}: {error}",
          file=sys.stderr)
    return 1

  def report(result: FileResult) -> None:
    tqdm.write(f"deepbof-tag: error: {result.error}", file=sys.stderr)

  channel_mode = FLAGS.channel_mode or tagger.info.get("channel_mode", "first")
  results = tag_files(tagger, paths, batch_size=FLAGS.batch_size,
                      chunk_seconds=FLAGS.chunk_seconds, channel_mode=channel_mode,
                      taggram_seconds=FLAGS.taggram_seconds if FLAGS.taggram_out else None,
                      progress=FLAGS.progress, on_error=report)
  sys.stdout.write(format_results(results, tagger.tags, FLAGS.output, FLAGS.top_k,
                                  FLAGS.threshold))
  sys.stdout.flush()
  if FLAGS.embedding_out:
    write_embeddings(FLAGS.embedding_out, results, int(tagger.info["embedding_size"]))
  if FLAGS.taggram_out:
    write_taggrams(FLAGS.taggram_out, results, tagger.tags,
                   tagger.windows_per_seconds(FLAGS.taggram_seconds)
                   * tagger.pool_frames * tagger.config.hop_length / tagger.sample_rate)
  failed = sum(r.error is not None for r in results)
  if failed:
    print(f"deepbof-tag: {failed} of {len(results)} file(s) failed", file=sys.stderr)
    return 1
  return 0


def run() -> None:
  """Console-script entry point ``deepbof-tag``."""
  cli.run_console_script(main, define_flags, __doc__)


if __name__ == "__main__":
  run()
