"""Source pieces of the demo corpus: real scores of ``music21.corpus`` turned into MIDI.

The demo corpus (``deepbof_tools.demo.corpus``) renders excerpts of real compositions.
This module owns the *score* side of it:

* the **catalogue**: which pieces of the corpus that ships with music21 are used, and
  the style each one stands for (Bach chorales, Handel and Corelli → baroque;
  Palestrina, Josquin and the Monteverdi madrigals → renaissance; Haydn, Mozart and
  Beethoven string quartets → classical; the abc folk collections → folk);
* a stable, seeded **order** of the pieces and the **split** of each piece (a
  ``hashlib`` hash of the piece, so excerpts of one piece never cross splits);
* the **conversion** of one piece to a MIDI file plus a JSON sidecar (parts sorted from
  high to low, the beat grid, the notated tempo), run in worker processes with a time
  limit and **cached** on disk, keyed by the piece and the music21 version.

Folk tunes are single melodies; they are harmonised here with a bass line and block
chords (diatonic triads chosen bar by bar to match the melody) so that folk clips can
also be duos and bands, as real folk recordings are. Those two tracks are marked
``derived`` in the sidecar.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import re
import signal
from typing import Any, Dict, List, Optional, Sequence, Tuple

from deepbof_tf.io_utils import write_atomic

STYLES = ("baroque", "renaissance", "classical", "folk")

# Bump when the conversion below changes what it writes: it is part of the cache key.
CONVERTER_VERSION = 3

# A piece whose file is larger than this is not used at all: music21 needs minutes for
# the largest MusicXML files (e.g. Beethoven op. 132, 205 KB compressed), and the run
# must stay deterministic, so the bound is a property of the file, not a timeout.
MAX_SCORE_BYTES = 70_000
MAX_UNCOMPRESSED_XML_BYTES = 110_000
# Safety net only: a parse that still takes this long is abandoned (and logged).
PARSE_TIMEOUT_SECONDS = 60.0
MAX_PARTS = 6
MIDI_TICKS_PER_QUARTER = 480
DEFAULT_SOURCE_QPM = 120.0  # music21's MIDI default when a score has no tempo mark

# (collection folder, style, kind, file pattern, excluded name pattern)
#   kind "score": one file is one piece; "abc_tunes": every X: tune of a file is a
#   piece; "abc_voices": every X: tune of the file is one *voice* of the same piece.
_SOURCES: Tuple[Tuple[str, str, str, str, Optional[str]], ...] = (
    ("bach", "baroque", "score", r"\.(mxl|xml|krn)$", None),
    ("handel", "baroque", "score", r"\.mxl$", None),
    ("corelli", "baroque", "score", r"\.xml$", None),
    ("palestrina", "renaissance", "score", r"\.krn$", None),
    # Monteverdi's madrigal books 3-5 (1592-1605) close the Renaissance; they are
    # labelled renaissance with Palestrina and Josquin.
    ("monteverdi", "renaissance", "score", r"\.mxl$", None),
    ("josquin", "renaissance", "abc_voices", r"\.abc$", None),
    ("haydn", "classical", "score", r"\.mxl$", None),
    # k545 is a two-staff piano sonata excerpt, not a quartet: it has too few parts.
    ("mozart", "classical", "score", r"\.mxl$", r"k545"),
    ("beethoven", "classical", "score", r"\.mxl$", None),
    ("ryansMammoth", "folk", "abc_tunes", r"\.abc$", None),
    ("oneills1850", "folk", "abc_tunes", r"\.abc$", None),
    ("essenFolksong", "folk", "abc_tunes", r"\.abc$", r"^(test|variant)"),
    ("airdsAirs", "folk", "abc_tunes", r"\.abc$", None),
)


@dataclasses.dataclass(frozen=True)
class PieceRef:
  """One piece of the catalogue.

  Args:
    key: stable identifier: the path relative to the music21 corpus folder, plus
      ``#<X number>`` for one tune of a multi-tune abc file.
    style: one of :data:`STYLES`.
    source: the corpus collection (``bach``, ``ryansMammoth``, …).
    kind: "score", "abc_tunes" or "abc_voices" (see ``_SOURCES``).
  """

  key: str
  style: str
  source: str
  kind: str

  @property
  def relative_path(self) -> str:
    return self.key.split("#", 1)[0]

  @property
  def tune_number(self) -> Optional[str]:
    return self.key.split("#", 1)[1] if "#" in self.key else None


def corpus_root() -> pathlib.Path:
  """The folder of the corpus that ships inside the music21 package."""
  import music21  # deferred: the catalogue is built once, in the parent process
  return pathlib.Path(music21.__file__).parent / "corpus"


def music21_version() -> str:
  import music21
  return str(music21.__version__)


def _abc_tunes(text: str) -> Tuple[str, List[Tuple[str, str]]]:
  """Splits abc text into (file header, [(X number, tune text)])."""
  chunks = re.split(r"(?m)^(?=X:)", text)
  header = "" if chunks[0].startswith("X:") else chunks[0]
  tunes = []
  for chunk in chunks:
    match = re.match(r"X:\s*(\S+)", chunk)
    if match:
      tunes.append((match.group(1), chunk))
  return header, tunes


def _read_abc(path: pathlib.Path) -> str:
  # The folk collections mix UTF-8 and Latin-1; Latin-1 never fails and abc's
  # musical content is ASCII.
  return path.read_text(encoding="latin-1")


def build_catalogue(root: Optional[pathlib.Path] = None) -> Dict[str, List[PieceRef]]:
  """Lists the usable pieces of the music21 corpus, by style.

  Files above :data:`MAX_SCORE_BYTES` (compressed ``.mxl``/``.krn``) or
  :data:`MAX_UNCOMPRESSED_XML_BYTES` (``.xml``) are left out so that conversion time is
  bounded. Each style's list is sorted by key (independent of the file system order).

  Args:
    root: the corpus folder (default: :func:`corpus_root`).

  Returns:
    ``{style: [PieceRef, ...]}`` for every style of :data:`STYLES`.

  Raises:
    FileNotFoundError: if a style has no piece at all (a broken music21 install).
  """
  root = pathlib.Path(root) if root is not None else corpus_root()
  catalogue: Dict[str, List[PieceRef]] = {style: [] for style in STYLES}
  for folder, style, kind, pattern, exclude in _SOURCES:
    base = root / folder
    if not base.is_dir():
      logging.warning("music21 corpus has no %s/ folder; skipping that source", folder)
      continue
    for path in sorted(base.rglob("*")):
      name = path.name
      if not path.is_file() or not re.search(pattern, name):
        continue
      if exclude and re.search(exclude, name):
        continue
      if "choraleAnalyses" in path.parts:
        continue
      size = path.stat().st_size
      limit = MAX_UNCOMPRESSED_XML_BYTES if name.endswith(".xml") else MAX_SCORE_BYTES
      if kind == "score" and size > limit:
        continue
      relative = path.relative_to(root).as_posix()
      if kind == "abc_tunes":
        _, tunes = _abc_tunes(_read_abc(path))
        seen = set()
        for number, _ in tunes:
          if number in seen:  # a few files repeat an X: number; keep the first
            continue
          seen.add(number)
          catalogue[style].append(PieceRef(f"{relative}#{number}", style, folder, kind))
      else:
        catalogue[style].append(PieceRef(relative, style, folder, kind))
  for style in STYLES:
    if not catalogue[style]:
      raise FileNotFoundError(f"{root}: no {style} piece found in the music21 corpus")
    catalogue[style].sort(key=lambda ref: ref.key)
  return catalogue


def stable_unit(*parts: Any) -> float:
  """A number in [0, 1) from a sha256 of ``parts`` (stable across processes/runs)."""
  digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def order_pieces(pieces: Sequence[PieceRef], seed: int) -> List[PieceRef]:
  """A seeded order of one style's pieces that alternates between collections.

  Each collection is shuffled by a sha256 of (seed, key); the collections are then
  interleaved round-robin so that a small corpus still mixes, e.g., Palestrina masses,
  Josquin chansons and Monteverdi madrigals instead of 95 % Palestrina.

  Args:
    pieces: the pieces of one style.
    seed: the corpus seed.

  Returns:
    The pieces in use order.
  """
  by_source: Dict[str, List[PieceRef]] = {}
  for ref in pieces:
    by_source.setdefault(ref.source, []).append(ref)
  queues = [sorted(refs, key=lambda r: (stable_unit("order", seed, r.key), r.key))
            for _, refs in sorted(by_source.items())]
  ordered: List[PieceRef] = []
  depth = 0
  while len(ordered) < len(pieces):
    for queue in queues:
      if depth < len(queue):
        ordered.append(queue[depth])
    depth += 1
  return ordered


SPLIT_FRACTIONS = (("train", 0.7), ("valid", 0.1), ("test", 0.2))
# MagnaTagATune's convention, which the MTT manifest reader applies: the
# first character of the clip's folder decides its split.
SPLIT_FOLDERS = {"train": "0123456789ab", "valid": "c", "test": "def"}


def split_of_piece(key: str) -> str:
  """The split of every excerpt of a piece: ≈ 70/10/20 by a sha256 of the piece key.

  Independent of the seed and of the number of clips, so a piece keeps its split.
  """
  u = stable_unit("split", key)
  edge = 0.0
  for split, fraction in SPLIT_FRACTIONS:
    edge += fraction
    if u < edge:
      return split
  return SPLIT_FRACTIONS[-1][0]


def folder_of_piece(key: str) -> str:
  """The ``<hex>`` audio folder of a piece's clips, inside its split's MTT range."""
  folders = SPLIT_FOLDERS[split_of_piece(key)]
  return folders[int(stable_unit("folder", key) * len(folders))]


def cache_key(ref: PieceRef) -> str:
  """Cache file stem of a piece: sha256 of its key, music21 and converter versions."""
  text = f"{ref.key}|music21={music21_version()}|converter={CONVERTER_VERSION}"
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def default_cache_dir() -> str:
  """``$XDG_CACHE_HOME/deepbof/demo_midi`` (``~/.cache/deepbof/demo_midi``)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "deepbof", "demo_midi")


@dataclasses.dataclass
class PieceData:
  """A converted piece, as read back from the cache.

  Args:
    info: the JSON sidecar (see :func:`convert_piece`).
    midi_path: the cached MIDI file (tracks in the order of ``info["tracks"]``).
  """

  info: Dict[str, Any]
  midi_path: str


def cache_paths(ref: PieceRef, cache_dir: str) -> Tuple[str, str]:
  stem = os.path.join(cache_dir, cache_key(ref))
  return stem + ".mid", stem + ".json"


def load_cached(ref: PieceRef, cache_dir: str) -> Optional[PieceData]:
  """The cached conversion of ``ref``, or None if it is not (validly) cached."""
  midi_path, info_path = cache_paths(ref, cache_dir)
  if not (os.path.exists(midi_path) and os.path.exists(info_path)):
    return None
  try:
    with open(info_path, "r", encoding="utf-8") as f:
      info = json.load(f)
  except (OSError, ValueError):
    return None
  if info.get("key") != ref.key or info.get("converter_version") != CONVERTER_VERSION:
    return None
  return PieceData(info=info, midi_path=midi_path)


class ParseTimeout(BaseException):
  """A score took longer than the parse time limit.

  A ``BaseException`` so that music21's own ``except Exception`` blocks cannot swallow
  it while the alarm interrupts a parse."""


def _on_alarm(signum, frame):  # pragma: no cover - only runs on a pathological file
  raise ParseTimeout()


def _parse_score(ref: PieceRef, root: pathlib.Path):
  """Parses a piece with music21 (no music21 pickle cache: we keep our own)."""
  from music21 import converter, stream
  path = root / ref.relative_path
  if ref.kind == "score":
    return converter.parse(str(path), forceSource=True)
  text = _read_abc(path)
  header, tunes = _abc_tunes(text)
  if ref.kind == "abc_voices":
    # One voice per X: tune (Josquin in the corpus): parse all and merge.
    parsed = converter.parse(text, format="abc", forceSource=True)
    if isinstance(parsed, stream.Opus):
      return parsed.mergeScores()
    return parsed
  number = ref.tune_number
  for tune_number, tune in tunes:
    if tune_number == number:
      return converter.parse(header + tune, format="abc", forceSource=True)
  raise ValueError(f"{path}: no tune X:{number}")


def _part_notes(part) -> List[Tuple[float, float, int]]:
  """(onset, duration, MIDI pitch) in quarter notes, tied notes merged.

  Faster than ``stripTies()`` (which is quadratic on long movements); grace notes and
  zero-length elements (chord symbols) are dropped; repeats are not expanded (the
  excerpt is taken from the notated order).
  """
  notes: List[Tuple[float, float, int]] = []
  open_ties: Dict[int, int] = {}
  for element in part.flatten().notes:
    duration = float(element.duration.quarterLength)
    if element.duration.isGrace or duration <= 0:
      continue
    onset = float(element.offset)
    tie = element.tie.type if element.tie is not None else None
    for pitch in element.pitches:
      midi = int(round(pitch.ps))
      if not 0 <= midi <= 127:
        continue
      if tie in ("stop", "continue") and midi in open_ties:
        index = open_ties[midi]
        start = notes[index][0]
        notes[index] = (start, onset + duration - start, midi)
        if tie == "stop":
          del open_ties[midi]
        continue
      notes.append((onset, duration, midi))
      if tie in ("start", "continue"):
        open_ties[midi] = len(notes) - 1
  notes.sort()
  return notes


def beat_quarters(numerator: int, denominator: int) -> float:
  """Length of one beat in quarter notes: compound meters (6/8, 9/8, 12/8, 6/4 …) beat
  in dotted units, simple meters in the denominator's unit."""
  unit = 4.0 / denominator
  if numerator in (6, 9, 12) and denominator >= 4:
    return 3.0 * unit
  return unit


def _beat_grid(part, length: float) -> Tuple[List[List[float]], Tuple[int, int]]:
  """Beats of the piece as [offset, index in bar] and the first time signature.

  Measures come from the top part; a short first measure is an anacrusis, so its beats
  are counted back from the first full bar line.
  """
  from music21 import meter, stream
  signatures = []
  for ts in part.recurse().getElementsByClass(meter.TimeSignature):
    # abc pick-up bars sometimes produce a spurious 1/32 signature: ignore tiny ones.
    if ts.denominator > 16 or ts.barDuration.quarterLength < 1.0:
      continue
    signatures.append((float(ts.getOffsetInHierarchy(part)), ts.numerator, ts.denominator))
  signatures.sort()
  if not signatures:
    signatures = [(0.0, 4, 4)]
  first_signature = (signatures[0][1], signatures[0][2])
  measures = [float(m.getOffsetInHierarchy(part))
              for m in part.getElementsByClass(stream.Measure)]
  measures = sorted(set(m for m in measures if 0.0 <= m < length))

  def signature_at(offset):
    current = signatures[0]
    for sig in signatures:
      if sig[0] <= offset + 1e-6:
        current = sig
    return current[1], current[2]

  beats: List[List[float]] = []
  if len(measures) < 2:
    numerator, denominator = first_signature
    step = beat_quarters(numerator, denominator)
    per_bar = max(1, int(round(numerator * (4.0 / denominator) / step)))
    n = int(length / step)
    return [[round(i * step, 6), float(i % per_bar)] for i in range(n)], first_signature
  bounds = measures + [length]
  for i, start in enumerate(measures):
    end = bounds[i + 1]
    numerator, denominator = signature_at(start)
    step = beat_quarters(numerator, denominator)
    bar = numerator * 4.0 / denominator
    per_bar = max(1, int(round(bar / step)))
    if i == 0 and end - start < bar - 1e-6:
      k = 1
      while end - k * step >= start - 1e-6:
        beats.append([round(end - k * step, 6), float((per_bar - k) % per_bar)])
        k += 1
      beats.sort()
      continue
    k = 0
    while start + k * step < end - 1e-6:
      beats.append([round(start + k * step, 6), float(k % per_bar)])
      k += 1
  return beats, first_signature


# Diatonic triads for the folk harmonisation: (scale degree semitones, chord quality).
_MAJOR_TRIADS = ((0, "maj"), (2, "min"), (5, "maj"), (7, "maj"), (9, "min"))
_MINOR_TRIADS = ((0, "min"), (3, "maj"), (5, "min"), (7, "maj"), (8, "maj"), (10, "maj"))
_TRIAD_PRIOR = {0: 0.3, 7: 0.2, 5: 0.1}


def _key_of(score) -> Tuple[int, str]:
  """Tonic pitch class and mode of a tune: its notated key, else key analysis."""
  from music21 import key as m21key
  keys = list(score.recurse().getElementsByClass(m21key.Key))
  if keys:
    k = keys[0]
  else:
    k = score.analyze("key")
  mode = "minor" if k.mode == "minor" else "major"
  return int(k.tonic.pitchClass), mode


def harmonise(melody: Sequence[Tuple[float, float, int]], beats: Sequence[Sequence[float]],
              tonic: int, mode: str, length: float
              ) -> Tuple[List[Tuple[float, float, int]], List[Tuple[float, float, int]]]:
  """Block chords and a bass line for a folk melody.

  The bar (or half bar in four-beat meters) is the harmonic unit; in each, the
  diatonic triad whose tones cover the most melody duration wins (a note outside the
  triad counts against it; the tonic, dominant and subdominant get a small prior),
  an empty unit keeps the previous chord. Chords sound on every beat in the octave
  above middle C's fourth below; the bass plays the root on the unit's first beat
  and the fifth on its middle beat.

  Args:
    melody: (onset, duration, pitch) of the tune, quarter notes.
    beats: the beat grid, [offset, index in bar].
    tonic: tonic pitch class (0 = C).
    mode: "major" or "minor".
    length: length of the piece in quarter notes.

  Returns:
    (chord notes, bass notes) as (onset, duration, pitch).
  """
  triads = _MAJOR_TRIADS if mode == "major" else _MINOR_TRIADS
  if not beats:
    return [], []
  per_bar = int(max(b[1] for b in beats)) + 1
  unit = 2 if per_bar >= 4 else per_bar
  # Harmonic units: runs of `unit` beats starting where index-in-bar % unit == 0.
  units: List[List[float]] = []
  for offset, index in beats:
    if int(index) % unit == 0 or not units:
      units.append([offset])
    else:
      units[-1].append(offset)
  chords: List[Tuple[float, float, int]] = []
  bass: List[Tuple[float, float, int]] = []
  previous = (0, triads[0][1])
  for u, unit_beats in enumerate(units):
    start = unit_beats[0]
    end = units[u + 1][0] if u + 1 < len(units) else length
    if end <= start:
      continue
    weight: Dict[int, float] = {}
    for onset, duration, pitch in melody:
      overlap = min(end, onset + duration) - max(start, onset)
      if overlap > 0:
        weight[pitch % 12] = weight.get(pitch % 12, 0.0) + overlap
    best = previous
    if weight:
      best_score = None
      for degree, quality in triads:
        root = (tonic + degree) % 12
        tones = {root, (root + (3 if quality == "min" else 4)) % 12, (root + 7) % 12}
        score = sum(w if pc in tones else -0.6 * w for pc, w in weight.items())
        score += _TRIAD_PRIOR.get(degree, 0.0)
        if best_score is None or score > best_score + 1e-9:
          best, best_score = (degree, quality), score
    previous = best
    root = (tonic + best[0]) % 12
    third = 3 if best[1] == "min" else 4
    # Close position between F3 and F4 (53..65): the tones' pitch classes placed there.
    voicing = sorted(53 + ((pc - 53) % 12) for pc in (root, root + third, root + 7))
    for b, beat in enumerate(unit_beats):
      beat_end = unit_beats[b + 1] if b + 1 < len(unit_beats) else end
      duration = max(0.05, 0.9 * (beat_end - beat))
      chords.extend((beat, duration, pitch) for pitch in voicing)
    bass_root = 36 + ((root - 36) % 12)  # C2..B2
    half = len(unit_beats) // 2
    if half >= 1:
      bass.append((start, 0.95 * (unit_beats[half] - start), bass_root))
      bass.append((unit_beats[half], 0.95 * (end - unit_beats[half]), bass_root + 7))
    else:
      bass.append((start, 0.95 * (end - start), bass_root))
  return chords, bass


def _median(values: Sequence[int]) -> float:
  ordered = sorted(values)
  n = len(ordered)
  return float(ordered[n // 2]) if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def _convert(ref: PieceRef, root: pathlib.Path) -> Tuple[Dict[str, Any], List[List[Tuple[float, float, int]]]]:
  """Parses a piece and extracts tracks, beat grid and metadata (no file written)."""
  from music21 import tempo as m21tempo
  score = _parse_score(ref, root)
  parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
  extracted = []
  for part in parts:
    notes = _part_notes(part)
    if notes:
      extracted.append((part, notes))
  if not extracted:
    raise ValueError(f"{ref.key}: no notes")
  if len(extracted) > MAX_PARTS:
    # Doubling parts (e.g. instruments doubling the chorale voices): keep the busiest.
    busiest = sorted(range(len(extracted)), key=lambda i: (-len(extracted[i][1]), i))
    keep = sorted(busiest[:MAX_PARTS])
    extracted = [extracted[i] for i in keep]
  # High to low by median pitch: the first track is the melody, the last the bass.
  extracted.sort(key=lambda item: -_median([n[2] for n in item[1]]))
  length = max(n[0] + n[1] for _, notes in extracted for n in notes)
  beats, signature = _beat_grid(extracted[0][0], length)
  marks = list(score.recurse().getElementsByClass(m21tempo.MetronomeMark))
  source_qpm = None
  for mark in marks:
    try:
      qpm = mark.getQuarterBPM()
    except Exception:  # noqa: BLE001 - music21 raises assorted errors on odd marks
      qpm = None
    if qpm:
      source_qpm = float(qpm)
      break
  tracks = []
  track_notes = []
  roles = (["melody"] + ["inner"] * (len(extracted) - 2) + ["bass"]) if len(extracted) > 1 \
      else ["melody"]
  for (part, notes), role in zip(extracted, roles):
    name = getattr(part, "partName", None) or ""
    tracks.append({"role": role, "name": str(name), "derived": False})
    track_notes.append(notes)
  harmonised = False
  if ref.style == "folk" and len(extracted) == 1:
    tonic, mode = _key_of(score)
    chords, bass = harmonise(track_notes[0], beats, tonic, mode, length)
    if chords and bass:
      tracks.append({"role": "chords", "name": "harmonisation", "derived": True})
      track_notes.append(chords)
      tracks.append({"role": "bass", "name": "harmonisation", "derived": True})
      track_notes.append(bass)
      harmonised = True
  for track, notes in zip(tracks, track_notes):
    pitches = [n[2] for n in notes]
    track.update(n_notes=len(notes), min_pitch=min(pitches), max_pitch=max(pitches),
                 median_pitch=_median(pitches))
  title = ""
  if score.metadata is not None and score.metadata.title:
    title = str(score.metadata.title)
  info = {
      "key": ref.key, "style": ref.style, "source": ref.source, "kind": ref.kind,
      "title": title, "music21_version": music21_version(),
      "converter_version": CONVERTER_VERSION,
      "length_quarters": round(length, 6),
      "time_signature": list(signature),
      "source_qpm": source_qpm,
      "harmonised": harmonised,
      "tracks": tracks,
      "beats": beats,
  }
  return info, track_notes


def write_midi(path: str, track_notes: Sequence[Sequence[Tuple[float, float, int]]],
               names: Sequence[str], time_signature: Tuple[int, int]) -> None:
  """Writes note lists (quarter-note times) as a MIDI file with ``symusic``, published
  by rename (``write_atomic``)."""
  from symusic import Note, Score, Tempo, TimeSignature, Track
  score = Score(MIDI_TICKS_PER_QUARTER, ttype="quarter")
  score.tempos.append(Tempo(0.0, qpm=DEFAULT_SOURCE_QPM, ttype="quarter"))
  score.time_signatures.append(
      TimeSignature(0.0, int(time_signature[0]), int(time_signature[1]), ttype="quarter"))
  for name, notes in zip(names, track_notes):
    track = Track(name=name, program=0, is_drum=False, ttype="quarter")
    for onset, duration, pitch in notes:
      track.notes.append(Note(float(onset), float(duration), int(pitch), 80, ttype="quarter"))
    score.tracks.append(track)
  write_atomic(path, score.dumps_midi())


def convert_piece(ref: PieceRef, cache_dir: str, *, root: Optional[str] = None,
                  timeout: float = PARSE_TIMEOUT_SECONDS) -> Dict[str, Any]:
  """Converts one piece to a cached MIDI file + JSON sidecar (reusing the cache).

  Runs in a worker process: the time limit uses ``SIGALRM`` (music21 is pure Python,
  so the alarm interrupts it); outside the main thread no limit is set.

  Args:
    ref: the piece.
    cache_dir: folder of the MIDI cache (created if missing).
    root: the music21 corpus folder (default: :func:`corpus_root`).
    timeout: parse time limit in seconds.

  Returns:
    ``{"key", "ok", "cached", "error"}``; ``ok`` is False if the piece could not be
    converted (the error names the piece and the reason).
  """
  if load_cached(ref, cache_dir) is not None:
    return {"key": ref.key, "ok": True, "cached": True, "error": None}
  root_path = pathlib.Path(root) if root else corpus_root()
  use_alarm = hasattr(signal, "SIGALRM") and _in_main_thread()
  previous = None
  try:
    if use_alarm:
      previous = signal.signal(signal.SIGALRM, _on_alarm)
      signal.setitimer(signal.ITIMER_REAL, timeout)
    info, track_notes = _convert(ref, root_path)
  except ParseTimeout:
    return {"key": ref.key, "ok": False, "cached": False,
            "error": f"{ref.key}: parsing took more than {timeout:.0f} s"}
  except Exception as e:  # noqa: BLE001 - any music21 failure just drops the piece
    return {"key": ref.key, "ok": False, "cached": False,
            "error": f"{ref.key}: {type(e).__name__}: {e}"}
  finally:
    if use_alarm:
      signal.setitimer(signal.ITIMER_REAL, 0)
      signal.signal(signal.SIGALRM, previous)
  os.makedirs(cache_dir, exist_ok=True)
  midi_path, info_path = cache_paths(ref, cache_dir)
  # Both are published by rename, the sidecar last: a concurrent or interrupted run
  # never sees half a file, and load_cached needs both.
  write_midi(midi_path, track_notes, [t["role"] for t in info["tracks"]],
             tuple(info["time_signature"]))
  write_atomic(info_path, json.dumps(info, sort_keys=True))
  return {"key": ref.key, "ok": True, "cached": False, "error": None}


def _in_main_thread() -> bool:
  import threading
  return threading.current_thread() is threading.main_thread()


def read_track_notes(midi_path: str) -> List[List[Tuple[float, float, int]]]:
  """The note lists of a cached MIDI file, in quarter notes (track order kept)."""
  from symusic import Score
  # Read in ticks and divide: symusic 0.5.9's Score(path, ttype="quarter") returns the
  # raw tick values labelled as quarters.
  score = Score(midi_path, ttype="tick")
  tpq = float(score.ticks_per_quarter)
  out = []
  for track in score.tracks:
    out.append([(round(n.time / tpq, 6), round(n.duration / tpq, 6), int(n.pitch))
                for n in track.notes])
  return out
