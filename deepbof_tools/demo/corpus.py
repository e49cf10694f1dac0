"""The embedded demo corpus: real compositions rendered into a MagnaTagATune-like dataset.

``deepbof-make-demo-corpus --output_dir=DIR [--num_clips=600 --clip_seconds=15
--seed=0 --num_workers=2 --cache_dir=…]`` writes::

  DIR/audio/<hex>/<name>-<clip_id>.<mp3|ogg|flac|wav>
  DIR/annotations_final.csv   MagnaTagATune layout (tab-separated, quoted, clip_id,
                              tag columns, mp3_path relative to DIR/audio)
  DIR/manifest.csv            path,split,tags (tags ';'-separated, path relative to DIR/audio)
  DIR/corpus.json             tags and their rules, counts, provenance of every clip

How a clip is made (one concern per module):

1. ``orchestration.plan_clips`` fixes each clip's tag-deciding categories with
   stratified counts (so every tag has >= 15 clips at 600 clips).
2. ``sources`` picks pieces of ``music21.corpus`` per style in a seeded order,
   converts each to MIDI once (cached under ``--cache_dir``) in worker processes.
3. Here, per clip, in a worker: an excerpt window on the beat grid, the arrangement
   (``orchestration.arrange``), tempo, rendering of every track with ``symusic``
   and pretty_midi's ``TimGM6mb.sf2``, mixing, dynamics, checks, encoding.

Dynamics. symusic 0.5.9's synthesizer ignores note velocity (measured: identical
output for velocity 20 and 127), so velocity is applied as a per-track gain
(GM's curve, ``(v/127)²``) after each track is rendered and RMS-normalised, and the
clip is normalised to a dynamics-dependent target RMS — quiet −32 dBFS, mid −23 dBFS,
loud −15 dBFS — limited by a peak ceiling of 0.95, so loud and quiet stay audible
(plain peak normalisation would erase them). Quiet clips are also low-passed
(2nd-order Butterworth at 2 kHz): soft playing is darker.

Checks. A clip is written only if its mix is not silent anywhere that matters: the
RMS of its first and last second and of at least 75 % of its 250 ms frames must reach
a fraction of the clip RMS, with no near-silent stretch longer than one second; after encoding, the decoded peak must be in (0.05, 0.99]
and the length exact. A failing attempt is re-drawn from a generator seeded by
(seed, clip, attempt), so the result does not depend on workers or scheduling.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from deepbof_tf.io_utils import write_atomic
from deepbof_tools.corpus_config import DemoCorpusConfig
from deepbof_tools.demo import orchestration
from deepbof_tools.demo import sources

CORPUS_FORMAT_VERSION = 1
# How many clips one piece gives at most before the next piece of the style is used:
# chorales and folk tunes are short; quartet movements are long but few.
EXCERPTS_PER_PIECE = {"folk": 1, "baroque": 1, "renaissance": 2, "classical": 3}
SPARE_FRACTION = 0.1
ATTEMPTS_PER_PIECE = 8
FALLBACK_PIECES = 3

ROLE_GAIN = {"melody": 1.0, "keyboard": 1.0, "inner": 0.55, "chords": 0.5, "bass": 0.75}
DRUM_GAIN = {"kit": 0.7, "hand": 0.6}
TARGET_RMS = {"quiet": 0.025, "mid": 0.07, "loud": 0.18}
PEAK_CEILING = 0.95
RENDER_SAMPLE_RATE = 44100
MAX_TRACK_PEAK = 50.0  # a sane render of one track peaks below ~5
PEAK_FLOOR = 0.08
MAX_ENCODED_PEAK = 0.99
MIN_ENCODED_PEAK = 0.05
MIN_ENCODED_RMS = 0.01
QUIET_LOWPASS_HZ = 2000.0
FADE_IN_SECONDS = 0.01
FADE_OUT_SECONDS = 0.05
EDGE_SECONDS = 1.0
EDGE_MIN_RELATIVE_RMS = 0.1
FRAME_SECONDS = 0.25
FRAME_MIN_RELATIVE_RMS = 0.02
MAX_QUIET_FRAME_FRACTION = 0.25
MAX_SILENT_GAP_SECONDS = 1.0

AUDIO_FORMATS = {  # extension → (soundfile format, subtype)
    "mp3": ("MP3", "MPEG_LAYER_III"), "ogg": ("OGG", "VORBIS"),
    "flac": ("FLAC", "PCM_16"), "wav": ("WAV", "PCM_16"),
}


@functools.lru_cache(maxsize=1)
def soundfont_path() -> str:
  """The General MIDI SoundFont ``TimGM6mb.sf2`` shipped inside the pretty_midi package."""
  import pretty_midi
  path = os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: TimGM6mb.sf2 not found; reinstall pretty_midi "
                            "(it ships the SoundFont)")
  return path


@functools.lru_cache(maxsize=1)
def _soundfont_sha256() -> str:
  with open(soundfont_path(), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _synthesizer(sample_rate: int):
  """A *fresh* synthesizer (≈ 1 ms). symusic 0.5.9's synthesizer caches rendered notes
  inside the instance, and a reused instance was measured to give slightly different
  audio for the same track depending on what it rendered before — which would make
  the corpus depend on how clips are scheduled over workers."""
  from symusic import Synthesizer
  return Synthesizer(soundfont_path(), int(sample_rate), 0)


@functools.lru_cache(maxsize=64)
def _load_piece(midi_path: str, info_path: str):
  with open(info_path, "r", encoding="utf-8") as f:
    info = json.load(f)
  return info, sources.read_track_notes(midi_path)


@dataclasses.dataclass(frozen=True)
class RenderTask:
  """Everything a worker needs to make one clip (picklable).

  Args:
    plan: the clip's plan.
    candidates: (piece key, cached MIDI path, sidecar path), primary piece first.
    excerpt_index: which of the primary piece's ``n_excerpts`` regions to start in.
    n_excerpts: number of clips taken from the primary piece.
    seed: corpus seed.
    clip_seconds: clip length.
    audio_root: ``<output_dir>/audio``.
  """

  plan: orchestration.ClipPlan
  candidates: Tuple[Tuple[str, str, str], ...]
  excerpt_index: int
  n_excerpts: int
  seed: int
  clip_seconds: float
  audio_root: str


class ClipCheckError(ValueError):
  """A rendered attempt failed a sanity check (silence, clipping)."""


def _rms(x: np.ndarray) -> float:
  return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def silence_problems(audio: np.ndarray, sample_rate: int) -> List[str]:
  """Why a mix counts as (partly) silent; empty if it passes.

  Args:
    audio: mono float waveform.
    sample_rate: its sample rate.

  Returns:
    Human-readable reasons (empty list: the clip is fine).
  """
  problems = []
  total = _rms(audio)
  if total < 1e-5:
    return [f"clip RMS {total:.2e} is silent"]
  edge = int(EDGE_SECONDS * sample_rate)
  for name, part in (("first", audio[:edge]), ("last", audio[-edge:])):
    if _rms(part) < EDGE_MIN_RELATIVE_RMS * total:
      problems.append(f"{name} second is near-silent ({_rms(part) / total:.3f} of clip RMS)")
  frame = int(FRAME_SECONDS * sample_rate)
  n_frames = len(audio) // frame
  if n_frames:
    frames = audio[:n_frames * frame].reshape(n_frames, frame).astype(np.float64)
    frame_rms = np.sqrt(np.mean(frames ** 2, axis=1))
    silent = frame_rms < FRAME_MIN_RELATIVE_RMS * total
    quiet = float(np.mean(silent))
    if quiet > MAX_QUIET_FRAME_FRACTION:
      problems.append(f"{quiet:.0%} of 250 ms frames are near-silent")
    # The longest run of near-silent frames: a general pause inside the clip.
    longest = run = 0
    for flag in silent:
      run = run + 1 if flag else 0
      longest = max(longest, run)
    if longest * FRAME_SECONDS > MAX_SILENT_GAP_SECONDS:
      problems.append(f"a {longest * FRAME_SECONDS:.2f} s near-silent gap")
  return problems


def _render_track(track: orchestration.ArrangedTrack, qpm: float, sample_rate: int,
                  n_samples: int) -> np.ndarray:
  from symusic import Note, Score, Tempo, Track
  score = Score(sources.MIDI_TICKS_PER_QUARTER, ttype="quarter")
  score.tempos.append(Tempo(0.0, qpm=float(qpm), ttype="quarter"))
  midi_track = Track(name=track.role, program=int(track.program), is_drum=track.is_drum,
                     ttype="quarter")
  for onset, duration, pitch in track.notes:
    midi_track.notes.append(Note(float(onset), float(duration), int(pitch),
                                 int(track.velocity), ttype="quarter"))
  score.tracks.append(midi_track)
  audio = _synthesizer(sample_rate).render(score, stereo=False)[0]
  out = np.zeros(n_samples, dtype=np.float64)
  m = min(n_samples, audio.shape[0])
  out[:m] = audio[:m]
  return out


def _lowpass(audio: np.ndarray, sample_rate: int, cutoff: float) -> np.ndarray:
  from scipy import signal
  sos = signal.butter(2, cutoff, btype="low", fs=sample_rate, output="sos")
  return signal.sosfilt(sos, audio)


def _mix(arrangement: orchestration.Arrangement, qpm: float, sample_rate: int,
         n_samples: int) -> np.ndarray:
  """Renders each track at :data:`RENDER_SAMPLE_RATE`, balances the tracks by role and
  velocity, sums them and resamples the mix to ``sample_rate``.

  Rendering always happens at 44.1 kHz because symusic 0.5.9 loops forever on a note
  whose sample loop shrinks below one frame after pitch shifting, and the loop is
  shortest at low output rates (e.g. the accordion's B♭6 hangs at 16 kHz but not at
  22.05 kHz); see ``orchestration.MAX_RENDER_PITCH`` for the pitch cap.
  """
  n_render = int(round(n_samples * RENDER_SAMPLE_RATE / sample_rate))
  mix = np.zeros(n_render, dtype=np.float64)
  for track in arrangement.tracks:
    audio = _render_track(track, qpm, RENDER_SAMPLE_RATE, n_render)
    # symusic 0.5.9 occasionally blows up on a note (values of 1e29 were measured for
    # the GM whistle): such an attempt is re-drawn, never mixed.
    if not np.all(np.isfinite(audio)) or float(np.max(np.abs(audio))) > MAX_TRACK_PEAK:
      raise orchestration.ArrangementError(
          f"{track.role} track (program {track.program}) rendered unstable samples")
    level = _rms(audio)
    if level < 1e-6:
      raise orchestration.ArrangementError(
          f"{track.role} track (program {track.program}) rendered silent")
    gain = DRUM_GAIN[track.drum_kind] if track.is_drum else ROLE_GAIN[track.role]
    # symusic ignores velocity: apply it as GM's (v/127)^2 amplitude curve.
    gain *= (track.velocity / 127.0) ** 2
    mix += audio * (gain / level)
  if sample_rate != RENDER_SAMPLE_RATE:
    from scipy import signal
    divisor = math.gcd(int(sample_rate), RENDER_SAMPLE_RATE)
    mix = signal.resample_poly(mix, int(sample_rate) // divisor,
                               RENDER_SAMPLE_RATE // divisor)
  out = np.zeros(n_samples, dtype=np.float64)
  m = min(n_samples, mix.shape[0])
  out[:m] = mix[:m]
  fade_in = max(1, int(FADE_IN_SECONDS * sample_rate))
  fade_out = max(1, int(FADE_OUT_SECONDS * sample_rate))
  out[:fade_in] *= np.linspace(0.0, 1.0, fade_in)
  out[-fade_out:] *= np.linspace(1.0, 0.0, fade_out)
  return out


def _apply_dynamics(mix: np.ndarray, level: str, sample_rate: int
                    ) -> Tuple[np.ndarray, Dict[str, Any]]:
  lowpass = QUIET_LOWPASS_HZ if level == "quiet" else None
  if lowpass:
    mix = _lowpass(mix, sample_rate, lowpass)
  rms, peak = _rms(mix), float(np.max(np.abs(mix)))
  # Target RMS, but a peak of at least PEAK_FLOOR (sustained organ or choir chords have
  # crest factors below 2) and at most PEAK_CEILING.
  gain = min(max(TARGET_RMS[level] / rms, PEAK_FLOOR / peak), PEAK_CEILING / peak)
  return (mix * gain).astype(np.float32), {
      "level": level, "target_rms": TARGET_RMS[level], "peak_floor": PEAK_FLOOR,
      "peak_ceiling": PEAK_CEILING,
      "lowpass_hz": lowpass, "gain": round(float(gain), 6)}


def _encode(audio: np.ndarray, sample_rate: int, path: str, audio_format: str
            ) -> Tuple[float, float, int]:
  """Writes the clip and checks the decoded signal; returns (peak, rms, n_samples)."""
  import soundfile as sf
  fmt, subtype = AUDIO_FORMATS[audio_format]
  if not np.all(np.isfinite(audio)):
    raise ClipCheckError(f"{path}: non-finite samples")  # LAME aborts on NaN input
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # Published by rename, by hand rather than with write_atomic: libsndfile encodes to a
  # path, and the checks below decode that very file before it is published (or dropped).
  tmp = f"{path}.tmp{os.getpid()}"
  x = audio
  for _ in range(4):
    sf.write(tmp, x, sample_rate, format=fmt, subtype=subtype)
    decoded, decoded_rate = sf.read(tmp, dtype="float32", always_2d=False)
    peak = float(np.max(np.abs(decoded))) if decoded.size else 0.0
    if peak <= MAX_ENCODED_PEAK:
      break
    # Lossy codecs overshoot the input peak by a few percent: scale and re-encode.
    x = (x * (0.97 * MAX_ENCODED_PEAK / peak)).astype(np.float32)
  else:
    os.remove(tmp)
    raise ClipCheckError(f"{path}: decoded peak {peak:.3f} > {MAX_ENCODED_PEAK}")
  if decoded_rate != sample_rate or decoded.shape[0] != audio.shape[0]:
    os.remove(tmp)
    raise ClipCheckError(f"{path}: decoded {decoded.shape[0]} samples at {decoded_rate} Hz, "
                         f"expected {audio.shape[0]} at {sample_rate} Hz")
  rms = _rms(decoded)
  if peak <= MIN_ENCODED_PEAK or rms < MIN_ENCODED_RMS:
    os.remove(tmp)
    raise ClipCheckError(f"{path}: decoded peak {peak:.3f} / RMS {rms:.4f} too low")
  os.replace(tmp, path)
  return peak, rms, int(decoded.shape[0])


def _slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "x"


def clip_relative_path(piece_key: str, clip_id: int, audio_format: str) -> str:
  """``<hex>/<collection>-<piece>-<clip_id>.<ext>``, relative to ``audio/``."""
  relative, _, number = piece_key.partition("#")
  collection = relative.split("/", 1)[0]
  piece = os.path.splitext(relative.split("/", 1)[1] if "/" in relative else relative)[0]
  if number:
    piece = f"{piece}_x{number}"
  name = f"{_slug(collection)}-{_slug(piece)}-{clip_id}.{audio_format}"
  return f"{sources.folder_of_piece(piece_key)}/{name}"


def _excerpt_start(beats: Sequence[Sequence[float]], length: float, window: float,
                   region: Optional[Tuple[int, int]], rng: np.random.Generator
                   ) -> Tuple[float, Optional[float]]:
  """A window start on a downbeat (any beat if needed); loops a too-short piece."""
  period = None
  fits = [b for b in beats if b[0] + window <= length + 1e-6]
  if not fits:
    period = length  # the tune is played again, as folk tunes are
    fits = [b for b in beats if b[0] < length]
  downbeats = [b for b in fits if int(b[1]) == 0] or fits
  if not downbeats:
    return 0.0, period
  if region is not None:
    index, count = region
    lo = (index * len(downbeats)) // count
    hi = max(lo + 1, ((index + 1) * len(downbeats)) // count)
    downbeats = downbeats[lo:hi]
  return float(downbeats[int(rng.integers(len(downbeats)))][0]), period


def _attempt(task: RenderTask, piece_key: str, info: Mapping[str, Any],
             notes: Sequence[Sequence[Tuple[float, float, int]]], attempt: int,
             first_for_piece: bool) -> Tuple[np.ndarray, Dict[str, Any]]:
  """One try at a clip from one piece; raises on a plan it cannot realise."""
  plan = task.plan
  rng = np.random.default_rng(np.random.SeedSequence(
      [int(task.seed), int(plan.index), int(attempt)]))
  numerator, denominator = info["time_signature"]
  beat_quarters = sources.beat_quarters(int(numerator), int(denominator))
  compound = abs(beat_quarters / (4.0 / denominator) - 3.0) < 1e-9
  lo, hi = orchestration.TEMPO_RANGES[plan.tempo]
  bpm = round(float(rng.uniform(lo, hi)), 1)
  qpm = bpm * beat_quarters
  window = task.clip_seconds * qpm / 60.0
  length = float(info["length_quarters"])
  region = (task.excerpt_index, task.n_excerpts) if first_for_piece else None
  start, period = _excerpt_start(info["beats"], length, window, region, rng)
  excerpt = [orchestration.window_notes(track, start, window, period) for track in notes]
  beats = orchestration.window_beats(info["beats"], start, window, period)
  arrangement = orchestration.arrange(plan, info["tracks"], excerpt, beats, beat_quarters,
                                      window, compound, rng)
  sample_rate = plan.sample_rate
  n_samples = int(round(task.clip_seconds * sample_rate))
  mix = _mix(arrangement, qpm, sample_rate, n_samples)
  problems = silence_problems(mix, sample_rate)
  if problems:
    raise ClipCheckError("; ".join(problems))
  audio, dynamics = _apply_dynamics(mix, plan.dynamics, sample_rate)
  pitched = [p for t in arrangement.tracks if not t.is_drum for _, _, p in t.notes]
  source_qpm = info.get("source_qpm")
  record = {
      "clip_id": str(plan.index),
      "piece": piece_key,
      "style": info["style"],
      "source": info["source"],
      "title": info.get("title", ""),
      "split": sources.split_of_piece(piece_key),
      "excerpt": {"start_quarter": round(start, 6), "end_quarter": round(start + window, 6),
                  "looped": period is not None, "region": list(region) if region else None},
      "tempo": {"bpm": bpm, "beat_quarters": beat_quarters, "qpm": round(qpm, 6),
                "time_signature": [int(numerator), int(denominator)],
                "source_qpm": source_qpm,
                "tempo_factor": round(qpm / (source_qpm or sources.DEFAULT_SOURCE_QPM), 6)},
      "transposition": int(arrangement.transposition),
      "register_target": arrangement.register_target,
      "pitch_range": [int(min(pitched)), int(max(pitched))],
      "tracks": [{
          "role": t.role, "program": int(t.program),
          "program_name": "drums" if t.is_drum else orchestration.PROGRAMS[t.program][0],
          "is_drum": bool(t.is_drum), "drum_kind": t.drum_kind,
          "n_notes": len(t.notes), "velocity": int(t.velocity),
          "source_tracks": list(t.source_tracks),
          # True for the folk harmonisation (bass and chords derived from the melody).
          "derived": any(bool(info["tracks"][i].get("derived")) for i in t.source_tracks),
          "octave_shift": int(t.octave_shift),
          "min_pitch": int(min(p for _, _, p in t.notes)),
          "max_pitch": int(max(p for _, _, p in t.notes))} for t in arrangement.tracks],
      "dynamics": dynamics,
      "plan": dataclasses.asdict(plan),
      "attempt": int(attempt),
      "rng": [int(task.seed), int(plan.index), int(attempt)],
  }
  return audio, record


def _relaxations(plan: orchestration.ClipPlan
                 ) -> List[Tuple[List[str], orchestration.ClipPlan]]:
  """The plan, then (if it asks for a register) the plan in the middle register.

  A register target needs an excerpt whose range fits an instrument of the family; if
  none of the candidate excerpts does, the clip is made in the middle register rather
  than failing the run (its tags still follow what was rendered).
  """
  out = [([], plan)]
  if plan.register != "mid":
    out.append((["register"], dataclasses.replace(plan, register="mid")))
  return out


def render_clip(task: RenderTask) -> Dict[str, Any]:
  """Makes one clip (worker entry point): tries pieces and attempts until one passes.

  Every attempt has its own generator, seeded by (seed, clip, attempt number), and a
  failed attempt writes nothing, so the result depends only on the task.

  Args:
    task: the :class:`RenderTask`.

  Returns:
    The clip's provenance record (see ``corpus.json``), with ``path``, ``audio``.

  Raises:
    RuntimeError: if no attempt on any candidate piece passes (names the clip, the
      pieces and the last reasons).
  """
  reasons = []
  attempt = 0
  for relaxed, plan in _relaxations(task.plan):
    plan_task = dataclasses.replace(task, plan=plan)
    for c, (piece_key, midi_path, info_path) in enumerate(task.candidates):
      info, notes = _load_piece(midi_path, info_path)
      for a in range(ATTEMPTS_PER_PIECE):
        try:
          # Only the primary piece's first attempt is bound to its excerpt region.
          audio, record = _attempt(plan_task, piece_key, info, notes, attempt,
                                   c == 0 and a == 0 and not relaxed)
          relative = clip_relative_path(piece_key, plan.index, plan.audio_format)
          peak, rms, n = _encode(audio, plan.sample_rate,
                                 os.path.join(task.audio_root, relative), plan.audio_format)
        except (orchestration.ArrangementError, ClipCheckError) as e:
          reasons.append(f"{piece_key} attempt {attempt}: {e}")
          attempt += 1
          continue
        record["path"] = relative
        record["audio"] = {"format": plan.audio_format,
                           "sample_rate": int(plan.sample_rate), "n_samples": n,
                           "peak": round(peak, 6), "rms": round(rms, 6)}
        record["rejected_attempts"] = attempt
        record["relaxed"] = relaxed
        return record
  raise RuntimeError(f"clip {task.plan.index}: no attempt passed on pieces "
                     f"{[c[0] for c in task.candidates]}; last reasons: {reasons[-3:]}")


def _convert_task(args: Tuple[sources.PieceRef, str]) -> Dict[str, Any]:
  ref, cache_dir = args
  return sources.convert_piece(ref, cache_dir)


class _Executor:
  """Ordered ``map`` over a spawn-context process pool, or in-process for
  ``num_workers <= 1``.

  'spawn' rather than 'fork': callers may have TensorFlow (threads) loaded. A
  ``ProcessPoolExecutor`` rather than ``multiprocessing.Pool``: a worker that dies
  raises ``BrokenProcessPool`` instead of hanging the run.
  """

  def __init__(self, num_workers: int):
    self.pool = None
    if num_workers > 1:
      from concurrent.futures import ProcessPoolExecutor
      self.pool = ProcessPoolExecutor(
          max_workers=num_workers, mp_context=multiprocessing.get_context("spawn"))

  def imap(self, fn, items: Iterable[Any]):
    if self.pool is None:
      return map(fn, items)
    return self.pool.map(fn, list(items))

  def close(self):
    if self.pool is not None:
      self.pool.shutdown(wait=True, cancel_futures=True)


def _progress(iterable, total: int, desc: str, enabled: bool):
  if not enabled:
    return iterable
  from tqdm import tqdm
  return tqdm(iterable, total=total, desc=desc, unit="clip" if desc == "rendering" else "piece")


def _convert_pieces(refs: Sequence[sources.PieceRef], cache_dir: str, executor: _Executor,
                    progress: bool) -> Dict[str, Dict[str, Any]]:
  """Converts (or finds cached) pieces; returns key → convert_piece result."""
  results = {}
  todo = []
  for ref in refs:
    if sources.load_cached(ref, cache_dir) is not None:
      results[ref.key] = {"key": ref.key, "ok": True, "cached": True, "error": None}
    else:
      todo.append(ref)
  if todo:
    iterator = executor.imap(_convert_task, [(ref, cache_dir) for ref in todo])
    for result in _progress(iterator, len(todo), "parsing scores", progress):
      results[result["key"]] = result
      if not result["ok"]:
        logging.warning("skipping piece: %s", result["error"])
  return results


def _select_pieces(plans: Sequence[orchestration.ClipPlan], seed: int, cache_dir: str,
                   executor: _Executor, progress: bool
                   ) -> Tuple[Dict[str, List[sources.PieceRef]], Dict[str, int],
                              List[Dict[str, Any]], int]:
  """Per style, the converted pieces in use order and how many are primary."""
  catalogue = sources.build_catalogue()
  used: Dict[str, List[sources.PieceRef]] = {}
  primary_counts: Dict[str, int] = {}
  failures: List[Dict[str, Any]] = []
  parsed = 0
  for style in orchestration.STYLES:
    n_style = sum(1 for p in plans if p.style == style)
    if n_style == 0:
      continue
    ordered = sources.order_pieces(catalogue[style], seed)
    n_primary = min(len(ordered), math.ceil(n_style / EXCERPTS_PER_PIECE[style]))
    wanted = min(len(ordered), n_primary + max(2, math.ceil(SPARE_FRACTION * n_primary)))
    ok: List[sources.PieceRef] = []
    position = 0
    while len(ok) < wanted and position < len(ordered):
      batch = ordered[position:position + (wanted - len(ok))]
      position += len(batch)
      results = _convert_pieces(batch, cache_dir, executor, progress)
      for ref in batch:
        result = results[ref.key]
        parsed += 0 if result["cached"] else 1
        if result["ok"]:
          ok.append(ref)
        else:
          failures.append({"piece": ref.key, "error": result["error"]})
    if not ok:
      raise RuntimeError(f"no {style} piece of the music21 corpus could be converted")
    used[style] = ok
    primary_counts[style] = min(n_primary, len(ok))
  return used, primary_counts, failures, parsed


def _tasks(plans: Sequence[orchestration.ClipPlan], used: Mapping[str, List[sources.PieceRef]],
           primary_counts: Mapping[str, int], config: DemoCorpusConfig, cache_dir: str,
           audio_root: str) -> List[RenderTask]:
  tasks = []
  seen: Dict[str, int] = {}
  for plan in plans:
    k = seen.get(plan.style, 0)
    seen[plan.style] = k + 1
    pieces = used[plan.style]
    n_primary = primary_counts[plan.style]
    n_style = sum(1 for p in plans if p.style == plan.style)
    spares = pieces[n_primary:] or pieces
    candidates = [pieces[k % n_primary]]
    for j in range(FALLBACK_PIECES):
      candidate = spares[(k + j) % len(spares)]
      if candidate not in candidates:
        candidates.append(candidate)
    tasks.append(RenderTask(
        plan=plan,
        candidates=tuple((ref.key,) + sources.cache_paths(ref, cache_dir) for ref in candidates),
        excerpt_index=k // n_primary, n_excerpts=math.ceil(n_style / n_primary),
        seed=config.seed, clip_seconds=config.clip_seconds, audio_root=audio_root))
  return tasks


OUTPUT_FILES = ("annotations_final.csv", "manifest.csv", "corpus.json")


def _prepare_output_dir(output_dir: str, overwrite: bool) -> str:
  audio_root = os.path.join(output_dir, "audio")
  existing = [name for name in OUTPUT_FILES + ("audio",)
              if os.path.exists(os.path.join(output_dir, name))]
  if existing:
    if not overwrite:
      raise FileExistsError(f"{output_dir}: already holds {existing}; pass overwrite=True "
                            "(--overwrite) to replace the demo corpus")
    for name in existing:
      path = os.path.join(output_dir, name)
      if os.path.isdir(path):
        shutil.rmtree(path)
      else:
        os.remove(path)
  os.makedirs(audio_root, exist_ok=True)
  return audio_root


def _write_text(path: str, text: str) -> None:
  write_atomic(path, text.encode("utf-8"))


def mtt_annotations_text(records: Sequence[Mapping[str, Any]], tags: Sequence[str]) -> str:
  """``annotations_final.csv`` in MagnaTagATune's layout.

  Tab-separated, every value double-quoted, columns ``clip_id``, one 0/1 column per
  tag, ``mp3_path`` (the path relative to ``audio/``, whatever its extension).
  """
  out = io.StringIO()
  writer = csv.writer(out, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
  writer.writerow(["clip_id", *tags, "mp3_path"])
  for record in records:
    present = set(record["tags"])
    writer.writerow([record["clip_id"], *("1" if t in present else "0" for t in tags),
                     record["path"]])
  return out.getvalue()


def csv_manifest_text(records: Sequence[Mapping[str, Any]]) -> str:
  """``manifest.csv``: ``path,split,tags`` with ``;``-separated tags."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["path", "split", "tags"])
  for record in records:
    writer.writerow([record["path"], record["split"], ";".join(record["tags"])])
  return out.getvalue()


def _counts(records: Sequence[Mapping[str, Any]], tags: Sequence[str]) -> Dict[str, Any]:
  splits = [s for s, _ in sources.SPLIT_FRACTIONS]
  per_split = {s: sum(1 for r in records if r["split"] == s) for s in splits}
  per_tag = {t: sum(1 for r in records if t in r["tags"]) for t in tags}
  tags_by_split = {s: {t: sum(1 for r in records if r["split"] == s and t in r["tags"])
                       for t in tags} for s in splits}
  pieces_by_split = {s: len({r["piece"] for r in records if r["split"] == s}) for s in splits}
  formats: Dict[str, int] = {}
  rates: Dict[str, int] = {}
  for r in records:
    formats[r["audio"]["format"]] = formats.get(r["audio"]["format"], 0) + 1
    key = str(r["audio"]["sample_rate"])
    rates[key] = rates.get(key, 0) + 1
  return {"clips": len(records), "splits": per_split, "pieces_by_split": pieces_by_split,
          "tags": per_tag, "tags_by_split": tags_by_split,
          "formats": dict(sorted(formats.items())), "sample_rates": dict(sorted(rates.items()))}


def make_demo_corpus(output_dir: str, config: DemoCorpusConfig = DemoCorpusConfig(), *,
                     num_workers: int = 2, cache_dir: Optional[str] = None,
                     overwrite: bool = False, progress: bool = True) -> Dict[str, Any]:
  """Generates the demo corpus into ``output_dir``.

  Args:
    output_dir: destination folder (created). Must not already hold a corpus unless
      ``overwrite``.
    config: number of clips, clip length, seed.
    num_workers: worker processes for score parsing and rendering (<= 1: in-process).
      The result does not depend on it.
    cache_dir: MIDI cache folder (default :func:`sources.default_cache_dir`).
    overwrite: replace an existing corpus in ``output_dir``.
    progress: show tqdm progress bars.

  Returns:
    A summary: ``counts`` (as in corpus.json), ``pieces_parsed`` (conversions not served
    by the cache), ``pieces_skipped``.
  """
  cache_dir = cache_dir or sources.default_cache_dir()
  audio_root = _prepare_output_dir(output_dir, overwrite)
  plans = orchestration.plan_clips(config.num_clips, config.seed)
  executor = _Executor(num_workers)
  try:
    used, primary_counts, failures, parsed = _select_pieces(
        plans, config.seed, cache_dir, executor, progress)
    tasks = _tasks(plans, used, primary_counts, config, cache_dir, audio_root)
    records = list(_progress(executor.imap(render_clip, tasks), len(tasks), "rendering",
                             progress))
  finally:
    executor.close()
  tags = list(orchestration.TAGS)
  for record in records:
    record["tags"] = orchestration.clip_tags(record)
  counts = _counts(records, tags)
  import soundfile
  import symusic
  corpus = {
      "format_version": CORPUS_FORMAT_VERSION,
      "generator": "deepbof_tools.demo.corpus",
      "config": dataclasses.asdict(config),
      "versions": {"music21": sources.music21_version(),
                   "symusic": getattr(symusic, "__version__", "unknown"),
                   "libsndfile": soundfile.__libsndfile_version__,
                   "converter": sources.CONVERTER_VERSION},
      "soundfont": {"name": "TimGM6mb.sf2", "sha256": _soundfont_sha256()},
      "audio_root": "audio",
      "split_rule": ("sha256 of the source piece: 70 % train, 10 % valid, 20 % test; the "
                     "clip folder is a hex digit in MagnaTagATune's range of that split "
                     "(0-b train, c valid, d-f test)"),
      "tags": tags,
      "tag_rules": {t: orchestration.TAG_RULES[t] for t in tags},
      "dynamics": {"target_rms": TARGET_RMS, "peak_floor": PEAK_FLOOR,
                   "peak_ceiling": PEAK_CEILING,
                   "quiet_lowpass_hz": QUIET_LOWPASS_HZ},
      "counts": counts,
      "pieces_skipped": failures,
      "clips": records,
  }
  _write_text(os.path.join(output_dir, "annotations_final.csv"),
              mtt_annotations_text(records, tags))
  _write_text(os.path.join(output_dir, "manifest.csv"), csv_manifest_text(records))
  _write_text(os.path.join(output_dir, "corpus.json"),
              json.dumps(corpus, indent=1, sort_keys=True) + "\n")
  return {"counts": counts, "pieces_parsed": parsed, "pieces_skipped": failures}


def _define_flags():
  # Defined when the console script runs, not at import: other entry points (e.g.
  # deepbof-demo) import this module and may define flags of the same names.
  from absl import flags
  flags.DEFINE_string("output_dir", None, "Folder to write the demo corpus to.")
  flags.DEFINE_integer("num_clips", DemoCorpusConfig.num_clips, "Number of clips.")
  flags.DEFINE_float("clip_seconds", DemoCorpusConfig.clip_seconds, "Clip length in seconds.")
  flags.DEFINE_integer("seed", 0, "Seed of every random choice.")
  flags.DEFINE_integer("num_workers", 2, "Worker processes (<= 1: in-process).")
  flags.DEFINE_string("cache_dir", None,
                      "MIDI cache folder (default $XDG_CACHE_HOME/deepbof/demo_midi).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing corpus in --output_dir.")
  flags.mark_flag_as_required("output_dir")


def main(argv: Sequence[str]) -> None:
  """absl entry point of ``deepbof-make-demo-corpus``."""
  from absl import flags
  from absl import logging as absl_logging
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  config = DemoCorpusConfig(num_clips=FLAGS.num_clips, clip_seconds=FLAGS.clip_seconds,
                            seed=FLAGS.seed)
  from absl import app
  try:
    summary = make_demo_corpus(FLAGS.output_dir, config, num_workers=FLAGS.num_workers,
                               cache_dir=FLAGS.cache_dir, overwrite=FLAGS.overwrite)
  except FileExistsError as e:
    raise app.UsageError(str(e)) from None
  counts = summary["counts"]
  absl_logging.info("wrote %d clips to %s (splits %s; %d pieces parsed, %d skipped)",
                    counts["clips"], FLAGS.output_dir, counts["splits"],
                    summary["pieces_parsed"], len(summary["pieces_skipped"]))
  print(json.dumps({"output_dir": FLAGS.output_dir, "splits": counts["splits"],
                    "tags": counts["tags"], "pieces_parsed": summary["pieces_parsed"]},
                   indent=1))


def run():
  """Console-script entry point ``deepbof-make-demo-corpus``."""
  from deepbof_tf import cli
  cli.run_console_script(main, _define_flags, __doc__)


if __name__ == "__main__":
  run()
