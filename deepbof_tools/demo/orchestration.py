"""Orchestration of the demo corpus: the tag vocabulary, the plan and the arrangement.

Three concerns of ``deepbof_tools.demo.corpus`` that need no audio:

* **Tags and their rules.** Every tag is a function of what was actually rendered
  (:func:`clip_tags`): instrument families from the General MIDI programs of the
  tracks that sounded, ``drums``/``beat`` from the drum track, ``fast``/``slow`` from
  the effective tempo, ``loud``/``quiet`` from the dynamics level, ``solo``/``ensemble``
  from the number of sounding tracks, ``low``/``high`` from the sounding pitch range,
  the style from the source piece.
* **The plan** (:func:`plan_clips`): for each clip, the categories that decide its tags
  (style, featured instrument family, texture, register, drums, tempo class, dynamics)
  and its file format / sample rate. Every category is *stratified*: the number of
  clips of each value is fixed by the weights (largest remainder) and only their order
  is seeded, so the per-tag counts are guaranteed, not merely expected.
* **The arrangement** (:func:`arrange`): which source tracks are kept, which GM program
  plays each, transposition and octave placement, velocities and the drum pattern,
  drawn from a seeded generator for one attempt of one clip.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

STYLES = ("baroque", "renaissance", "classical", "folk")

# ---------------------------------------------------------------------------------------
# General MIDI programs (0-based) that the arrangements use: name and a playable range.
PROGRAMS: Dict[int, Tuple[str, int, int]] = {
    0: ("acoustic grand piano", 21, 108), 1: ("bright acoustic piano", 21, 108),
    4: ("electric piano", 28, 103), 6: ("harpsichord", 29, 89),
    16: ("drawbar organ", 24, 96), 19: ("church organ", 24, 96), 20: ("reed organ", 36, 96),
    21: ("accordion", 41, 89), 23: ("tango accordion", 41, 89),
    24: ("nylon guitar", 40, 84), 25: ("steel guitar", 40, 84), 27: ("clean electric guitar", 40, 86),
    32: ("acoustic bass", 28, 60), 33: ("fingered electric bass", 28, 62), 35: ("fretless bass", 28, 62),
    40: ("violin", 55, 100), 41: ("viola", 48, 88), 42: ("cello", 36, 76),
    46: ("harp", 24, 103), 48: ("string ensemble", 28, 96), 49: ("slow strings", 28, 96),
    52: ("choir aahs", 40, 84), 53: ("voice oohs", 40, 84),
    56: ("trumpet", 54, 86), 57: ("trombone", 38, 72), 58: ("tuba", 26, 58),
    60: ("french horn", 40, 77), 61: ("brass section", 36, 86),
    64: ("soprano sax", 56, 88), 65: ("alto sax", 49, 81), 66: ("tenor sax", 44, 76),
    67: ("baritone sax", 36, 69),
    68: ("oboe", 58, 93), 69: ("english horn", 52, 81), 70: ("bassoon", 34, 75),
    71: ("clarinet", 50, 94),
    72: ("piccolo", 74, 108), 73: ("flute", 60, 98), 74: ("recorder", 60, 98),
    75: ("pan flute", 60, 96),
    80: ("square lead", 36, 100), 81: ("sawtooth lead", 36, 100),
    88: ("new age pad", 36, 96), 89: ("warm pad", 36, 96),
    105: ("banjo", 48, 88), 110: ("fiddle", 55, 100),
}

# symusic 0.5.9 (prestosynth) loops forever on a note whose sample loop, scaled by the
# pitch shift and by output rate / sample rate and truncated to whole frames, has
# length 0 — a C++ loop that no timeout can interrupt. Probing every program of
# PROGRAMS at every pitch 0-127 at 22.05 kHz, hangs start at MIDI 93 (e.g. piccolo 100,
# 102-106, 108; violin 98, 100-105, 107) and never occur below. The renderer works at
# 44.1 kHz, where loops are twice as long (an octave of margin for the shift-induced
# case), and pitched notes are folded into [range low, min(range high,
# MAX_RENDER_PITCH)]; a test renders every such note in a subprocess. The GM whistle
# (78) is not used: it renders values around 1e29 at most pitches.
MAX_RENDER_PITCH = 92

# Instrument tags: a tag is true iff a track with one of these programs sounded.
# Parent tags overlap their children as in a folksonomy: violin and cello are strings;
# sax and flute are woodwinds (GM's reed and pipe families).
INSTRUMENT_TAGS: Dict[str, frozenset] = {
    "piano": frozenset(range(0, 6)),
    "harpsichord": frozenset({6}),
    "organ": frozenset(range(16, 21)),
    "accordion": frozenset({21, 23}),
    "guitar": frozenset(range(24, 32)),
    "bass": frozenset(range(32, 40)),
    "violin": frozenset({40, 110}),
    "cello": frozenset({42}),
    "strings": frozenset({40, 41, 42, 43, 44, 45, 48, 49, 110}),
    "harp": frozenset({46}),
    "choir": frozenset({52, 53}),
    "brass": frozenset(range(56, 64)),
    "sax": frozenset(range(64, 68)),
    "woodwind": frozenset(range(64, 80)),
    "flute": frozenset(range(72, 80)),
    "synth": frozenset(range(80, 96)),
    "banjo": frozenset({105}),
}

# Thresholds of the non-instrument tags (a gap between classes, as real taggers leave
# mid-tempo or mid-register music untagged).
FAST_BPM = 126.0       # fast iff effective tempo >= this (beats per minute)
SLOW_BPM = 72.0        # slow iff effective tempo <= this
LOW_MAX_PITCH = 60     # low iff the highest sounding pitched note <= C4
HIGH_MIN_PITCH = 72    # high iff the lowest sounding pitched note >= C5
TEMPO_RANGES = {"slow": (48.0, 70.0), "mid": (84.0, 116.0), "fast": (132.0, 176.0)}

TAGS: Tuple[str, ...] = (
    tuple(INSTRUMENT_TAGS)
    + ("drums", "beat", "fast", "slow", "loud", "quiet", "solo", "ensemble", "low", "high")
    + STYLES)

TAG_RULES: Dict[str, str] = {
    **{tag: "a track with GM program in {" + ", ".join(str(p) for p in sorted(progs))
       + "} sounded" for tag, progs in INSTRUMENT_TAGS.items()},
    "drums": "a percussion track (GM channel 10, kit or hand percussion) sounded",
    "beat": "a drum-kit pattern (kick, snare, hi-hat on the beat grid) sounded",
    "fast": f"effective tempo >= {FAST_BPM:g} beats per minute",
    "slow": f"effective tempo <= {SLOW_BPM:g} beats per minute",
    "loud": "dynamics level 'loud' (high velocities, high target RMS)",
    "quiet": "dynamics level 'quiet' (low velocities, low target RMS, soft low-pass)",
    "solo": "exactly one track sounded (one pitched instrument, no drums)",
    "ensemble": "three or more tracks sounded (drums included)",
    "low": f"every sounding pitched note <= MIDI {LOW_MAX_PITCH}",
    "high": f"every sounding pitched note >= MIDI {HIGH_MIN_PITCH}",
    **{style: f"the source piece is {style} (see the sources catalogue)" for style in STYLES},
}


def program_tags(program: int) -> List[str]:
  """The instrument tags of one GM program (0-based)."""
  return [tag for tag, programs in INSTRUMENT_TAGS.items() if program in programs]


def clip_tags(record: Mapping[str, Any]) -> List[str]:
  """The tags of a rendered clip, from its render record (see ``deepbof_tools.demo.corpus``).

  Args:
    record: needs ``tracks`` (each with ``program``, ``is_drum``, ``n_notes``,
      ``drum_kind`` for drum tracks), ``tempo.bpm``, ``dynamics.level``,
      ``pitch_range`` ([min, max] of sounding pitched notes) and ``style``.

  Returns:
    The clip's tags in :data:`TAGS` order.
  """
  sounding = [t for t in record["tracks"] if t["n_notes"] > 0]
  tags = set()
  for track in sounding:
    if track["is_drum"]:
      tags.add("drums")
      if track.get("drum_kind") == "kit":
        tags.add("beat")
    else:
      tags.update(program_tags(int(track["program"])))
  bpm = float(record["tempo"]["bpm"])
  if bpm >= FAST_BPM:
    tags.add("fast")
  if bpm <= SLOW_BPM:
    tags.add("slow")
  level = record["dynamics"]["level"]
  if level in ("loud", "quiet"):
    tags.add(level)
  if len(sounding) == 1 and not sounding[0]["is_drum"]:
    tags.add("solo")
  if len(sounding) >= 3:
    tags.add("ensemble")
  low, high = record["pitch_range"]
  if high <= LOW_MAX_PITCH:
    tags.add("low")
  if low >= HIGH_MIN_PITCH:
    tags.add("high")
  tags.add(record["style"])
  return [tag for tag in TAGS if tag in tags]


# ---------------------------------------------------------------------------------------
# The plan.

STYLE_WEIGHTS = {"folk": 0.32, "baroque": 0.27, "renaissance": 0.23, "classical": 0.18}

# Featured instrument family per style: the family that must sound in the clip. The
# weights are uneven (a folksonomy has a long tail) and follow the repertoire (choirs in
# Renaissance polyphony, harpsichords in the Baroque, fiddles and banjos in folk), and
# every family reaches >= 15 clips at 600 clips (checked by the tests).
FEATURED_WEIGHTS: Dict[str, Dict[str, float]] = {
    "folk": {"violin": 0.15, "flute": 0.10, "accordion": 0.12, "guitar": 0.11,
             "banjo": 0.12, "piano": 0.05, "harp": 0.06, "bass": 0.06, "woodwind": 0.03,
             "sax": 0.04, "synth": 0.05, "organ": 0.03, "brass": 0.03, "cello": 0.02,
             "strings": 0.02, "harpsichord": 0.01},
    "baroque": {"harpsichord": 0.15, "organ": 0.13, "violin": 0.09, "cello": 0.06,
                "strings": 0.09, "flute": 0.08, "woodwind": 0.07, "brass": 0.05,
                "choir": 0.06, "piano": 0.06, "harp": 0.03, "guitar": 0.02, "bass": 0.03,
                "synth": 0.04, "sax": 0.03, "accordion": 0.01},
    "renaissance": {"choir": 0.24, "organ": 0.08, "strings": 0.09, "brass": 0.09,
                    "woodwind": 0.08, "flute": 0.08, "guitar": 0.07, "harp": 0.06,
                    "harpsichord": 0.05, "violin": 0.03, "cello": 0.03, "piano": 0.03,
                    "synth": 0.03, "bass": 0.02, "sax": 0.02},
    "classical": {"strings": 0.18, "violin": 0.14, "cello": 0.09, "piano": 0.16,
                  "woodwind": 0.07, "flute": 0.06, "brass": 0.04, "harp": 0.03,
                  "organ": 0.02, "choir": 0.02, "guitar": 0.03, "synth": 0.05, "sax": 0.04,
                  "bass": 0.04, "harpsichord": 0.03},
}

# Drums per style (stratified within the style): folk bands and "baroque pop" often
# have drums, Renaissance polyphony rarely.
DRUM_WEIGHTS = {
    "folk": {"none": 0.65, "hand": 0.20, "kit": 0.15},
    "baroque": {"none": 0.72, "hand": 0.08, "kit": 0.20},
    "renaissance": {"none": 0.82, "hand": 0.10, "kit": 0.08},
    "classical": {"none": 0.76, "hand": 0.06, "kit": 0.18},
}
TEMPO_WEIGHTS = {"slow": 0.24, "mid": 0.44, "fast": 0.32}
DYNAMICS_WEIGHTS = {"quiet": 0.22, "mid": 0.48, "loud": 0.30}
FORMAT_WEIGHTS = {"mp3": 0.72, "ogg": 0.12, "flac": 0.09, "wav": 0.07}
SAMPLE_RATE_WEIGHTS = {44100: 0.30, 22050: 0.40, 16000: 0.30}

# Families that can carry a melody in the low (<= C4) / high (>= C5) register: the low
# ones have an instrument reaching down to C2, the high ones one reaching up to
# MAX_RENDER_PITCH, so that a melody spanning an octave and a half fits.
LOW_FAMILIES = frozenset({"piano", "harpsichord", "organ", "bass", "cello", "strings",
                          "harp", "brass", "sax", "woodwind", "synth"})
HIGH_FAMILIES = frozenset({"piano", "organ", "violin", "strings", "harp", "woodwind",
                           "flute", "synth"})
LOW_FRACTION = 0.16    # of the clips whose featured family can play low
HIGH_FRACTION = 0.18   # of the remaining clips whose featured family can play high

KEYBOARD_FAMILIES = frozenset({"piano", "harpsichord", "organ", "guitar", "harp", "accordion"})
BASS_FAMILIES = frozenset({"bass", "cello"})
TEXTURE_WEIGHTS = {
    "keyboard": {"melody": 0.22, "keyboard": 0.40, "duo": 0.13, "ensemble": 0.25},
    "bass": {"duo": 0.40, "ensemble": 0.60},
    "other": {"melody": 0.32, "duo": 0.22, "ensemble": 0.46},
}


@dataclasses.dataclass(frozen=True)
class ClipPlan:
  """The planned categories of one clip (the arrangement realises them).

  Args:
    index: clip index (0-based); also the clip_id.
    style: style of the source piece.
    family: featured instrument family (a key of :data:`INSTRUMENT_TAGS`).
    texture: "melody" (the top part alone), "keyboard" (all parts on one instrument),
      "duo" (top and bottom parts) or "ensemble" (all parts, one instrument each).
    register: "low", "mid" or "high" (low/high only for melody textures).
    drums: "none", "hand" (hand percussion) or "kit" (drum kit).
    tempo: "slow", "mid" or "fast" (a tempo range of :data:`TEMPO_RANGES`).
    dynamics: "quiet", "mid" or "loud".
    audio_format: "mp3", "ogg", "flac" or "wav".
    sample_rate: 44100, 22050 or 16000.
  """

  index: int
  style: str
  family: str
  texture: str
  register: str
  drums: str
  tempo: str
  dynamics: str
  audio_format: str
  sample_rate: int


def facet_rng(seed: int, facet: str) -> np.random.Generator:
  """A generator for one planning facet, from the seed and a sha256 of the facet name."""
  salt = int.from_bytes(hashlib.sha256(facet.encode("utf-8")).digest()[:4], "big")
  return np.random.default_rng(np.random.SeedSequence([int(seed), salt]))


def stratified(weights: Mapping[Any, float], n: int, rng: np.random.Generator) -> List[Any]:
  """``n`` labels with exact counts from ``weights`` (largest remainder), seeded order.

  Args:
    weights: label → weight (normalised here).
    n: number of labels to draw.
    rng: generator for the order.

  Returns:
    A list of ``n`` labels; label ``k`` occurs ``floor(w_k n)`` or one more times.
  """
  labels = list(weights)
  if n <= 0:
    return []
  w = np.array([float(weights[k]) for k in labels], dtype=np.float64)
  w = w / w.sum()
  exact = w * n
  counts = np.floor(exact).astype(int)
  remainder = n - int(counts.sum())
  # Ties broken by label order so that the counts do not depend on float noise.
  order = sorted(range(len(labels)), key=lambda i: (-(exact[i] - counts[i]), i))
  for i in order[:remainder]:
    counts[i] += 1
  out: List[Any] = []
  for label, count in zip(labels, counts):
    out.extend([label] * int(count))
  return [out[i] for i in rng.permutation(n)]


def _texture_group(family: str) -> str:
  if family in KEYBOARD_FAMILIES:
    return "keyboard"
  if family in BASS_FAMILIES:
    return "bass"
  return "other"


def plan_clips(num_clips: int, seed: int) -> List[ClipPlan]:
  """Plans every clip's tag-deciding categories (stratified, seeded).

  Args:
    num_clips: number of clips.
    seed: corpus seed.

  Returns:
    One :class:`ClipPlan` per clip, in clip order.
  """
  n = int(num_clips)
  style = stratified(STYLE_WEIGHTS, n, facet_rng(seed, "style"))
  family: List[Optional[str]] = [None] * n
  drums: List[Optional[str]] = [None] * n
  for s in STYLES:
    members = [i for i in range(n) if style[i] == s]
    for i, f in zip(members, stratified(FEATURED_WEIGHTS[s], len(members),
                                        facet_rng(seed, f"family/{s}"))):
      family[i] = f
    for i, d in zip(members, stratified(DRUM_WEIGHTS[s], len(members),
                                        facet_rng(seed, f"drums/{s}"))):
      drums[i] = d
  register = ["mid"] * n
  low_pool = [i for i in range(n) if family[i] in LOW_FAMILIES]
  for i, r in zip(low_pool, stratified({"low": LOW_FRACTION, "mid": 1 - LOW_FRACTION},
                                       len(low_pool), facet_rng(seed, "register/low"))):
    register[i] = r
  high_pool = [i for i in range(n) if family[i] in HIGH_FAMILIES and register[i] == "mid"]
  for i, r in zip(high_pool, stratified({"high": HIGH_FRACTION, "mid": 1 - HIGH_FRACTION},
                                        len(high_pool), facet_rng(seed, "register/high"))):
    register[i] = r
  texture = ["melody"] * n
  for group, weights in TEXTURE_WEIGHTS.items():
    members = [i for i in range(n)
               if register[i] == "mid" and _texture_group(family[i]) == group]
    for i, t in zip(members, stratified(weights, len(members),
                                        facet_rng(seed, f"texture/{group}"))):
      texture[i] = t
  tempo = stratified(TEMPO_WEIGHTS, n, facet_rng(seed, "tempo"))
  dynamics = stratified(DYNAMICS_WEIGHTS, n, facet_rng(seed, "dynamics"))
  audio_format = stratified(FORMAT_WEIGHTS, n, facet_rng(seed, "format"))
  sample_rate = stratified(SAMPLE_RATE_WEIGHTS, n, facet_rng(seed, "sample_rate"))
  return [ClipPlan(index=i, style=style[i], family=family[i], texture=texture[i],
                   register=register[i], drums=drums[i], tempo=tempo[i],
                   dynamics=dynamics[i], audio_format=audio_format[i],
                   sample_rate=int(sample_rate[i]))
          for i in range(n)]


def planned_tag_floor(plans: Sequence[ClipPlan]) -> Dict[str, int]:
  """Per tag, the number of clips whose plan alone guarantees the tag.

  A lower bound of the rendered counts: a featured family always sounds (the renderer
  re-draws an excerpt where it would not), and the stratified categories map to tags
  one to one. Used to check the ">= 15 clips per tag" guarantee without rendering.
  """
  floor = {tag: 0 for tag in TAGS}
  for plan in plans:
    floor[plan.family] += 1
    if plan.family in ("violin", "cello"):
      floor["strings"] += 1
    if plan.family in ("sax", "flute"):
      floor["woodwind"] += 1
    floor[plan.style] += 1
    if plan.drums != "none":
      floor["drums"] += 1
    if plan.drums == "kit":
      floor["beat"] += 1
    if plan.tempo == "fast":
      floor["fast"] += 1
    if plan.tempo == "slow":
      floor["slow"] += 1
    if plan.dynamics in ("loud", "quiet"):
      floor[plan.dynamics] += 1
    if plan.register in ("low", "high"):
      floor[plan.register] += 1
    if plan.texture in ("melody", "keyboard") and plan.drums == "none":
      floor["solo"] += 1
    if plan.texture == "ensemble" or (plan.texture == "duo" and plan.drums != "none"):
      floor["ensemble"] += 1
  return floor


# ---------------------------------------------------------------------------------------
# The arrangement.

# Programs a featured family plays as a melody (register filters them by range).
MELODY_PROGRAMS: Dict[str, Tuple[int, ...]] = {
    "piano": (0, 1, 4), "harpsichord": (6,), "organ": (19, 16, 20), "accordion": (21, 23),
    "guitar": (24, 25, 27), "banjo": (105,), "bass": (32, 33, 35), "violin": (40, 110),
    "cello": (42,), "strings": (48, 49, 41), "harp": (46,), "choir": (52, 53),
    "brass": (56, 57, 58, 60, 61), "sax": (64, 65, 66, 67), "woodwind": (68, 69, 70, 71),
    "flute": (73, 74, 72, 75), "synth": (80, 81, 88, 89),
}
# Default programs of each role per style, for roles the featured family does not take.
STYLE_MELODY = {
    "baroque": (40, 73, 68, 56, 6, 19), "renaissance": (74, 52, 68, 24, 40),
    "classical": (40, 73, 71, 0), "folk": (110, 73, 21, 105, 74),
}
STYLE_INNER = {
    "baroque": (48, 41, 6, 19, 40), "renaissance": (52, 53, 41, 57, 74, 24),
    "classical": (41, 40, 48, 60, 71), "folk": (24, 25, 21, 0, 105, 46),
}
STYLE_BASS = {
    "baroque": (42, 70, 6, 19, 32), "renaissance": (57, 70, 42, 19, 24),
    "classical": (42, 0, 70, 32), "folk": (32, 24, 21, 0, 33),
}
# Homogeneous ensembles a featured family can lead: role → programs to cycle through.
ENSEMBLE_PRESETS: Dict[str, Tuple[Dict[str, Tuple[int, ...]], ...]] = {
    "choir": ({"melody": (52,), "inner": (52,), "bass": (52,)},
              {"melody": (53,), "inner": (53,), "bass": (53,)}),
    "strings": ({"melody": (40,), "inner": (40, 41), "bass": (42,)},
                {"melody": (48,), "inner": (48,), "bass": (48,)},
                {"melody": (49,), "inner": (49,), "bass": (49,)}),
    "violin": ({"melody": (40,), "inner": (40, 41), "bass": (42,)},),
    "cello": ({"melody": (40,), "inner": (40, 41), "bass": (42,)},),
    "brass": ({"melody": (56,), "inner": (60, 57), "bass": (58,)},
              {"melody": (61,), "inner": (61,), "bass": (57,)}),
    "sax": ({"melody": (64, 65), "inner": (65, 66), "bass": (67,)},),
    "woodwind": ({"melody": (68,), "inner": (71, 69), "bass": (70,)},),
    "flute": ({"melody": (73,), "inner": (68, 71), "bass": (70,)},),
    "synth": ({"melody": (81,), "inner": (89,), "bass": (33,)},
              {"melody": (80,), "inner": (88,), "bass": (81,)}),
}
# Roles a featured family may take in a mixed ensemble.
FAMILY_ROLES: Dict[str, Tuple[str, ...]] = {
    "piano": ("inner", "melody"), "harpsichord": ("inner",), "organ": ("inner", "melody"),
    "accordion": ("inner", "melody"), "guitar": ("inner", "melody"), "banjo": ("inner", "melody"),
    "harp": ("inner",), "bass": ("bass",), "cello": ("bass",),
    "violin": ("melody",), "strings": ("inner", "melody"), "choir": ("melody", "inner"),
    "brass": ("melody", "inner"), "sax": ("melody",), "woodwind": ("melody", "inner"),
    "flute": ("melody",), "synth": ("melody", "inner"),
}
DYNAMICS_VELOCITY = {"quiet": (36, 56), "mid": (64, 90), "loud": (100, 122)}
ROLE_VELOCITY_OFFSET = {"melody": 6, "inner": -6, "chords": -8, "bass": -2, "keyboard": 0,
                        "drums": -4}

# GM percussion keys (channel 10).
KICK, SNARE, CLOSED_HAT, OPEN_HAT, CRASH = 36, 38, 42, 46, 49
LOW_CONGA, HIGH_CONGA, MUTE_CONGA, HIGH_BONGO, LOW_BONGO, SHAKER, TAMBOURINE = (
    64, 63, 62, 60, 61, 82, 54)

Note = Tuple[float, float, int]  # (onset, duration, pitch) in quarter notes


@dataclasses.dataclass
class ArrangedTrack:
  """One track of an arrangement.

  Args:
    role: "melody", "inner", "chords", "bass", "keyboard" (all parts merged) or "drums".
    program: GM program (0-based); ignored for drums.
    is_drum: a percussion track (GM channel 10).
    notes: (onset, duration, pitch), quarter notes from the excerpt start.
    velocity: MIDI velocity of the track's notes (the render applies it as gain).
    source_tracks: indices of the piece's tracks merged into this one.
    octave_shift: octaves added to fit the program's range.
    drum_kind: "kit" or "hand" for drum tracks.
  """

  role: str
  program: int
  is_drum: bool
  notes: List[Note]
  velocity: int
  source_tracks: List[int]
  octave_shift: int = 0
  drum_kind: Optional[str] = None


class ArrangementError(ValueError):
  """This attempt cannot realise the plan (e.g. the featured part rests throughout)."""


def _choice(rng: np.random.Generator, options: Sequence[Any]) -> Any:
  return options[int(rng.integers(len(options)))]


def window_notes(notes: Sequence[Note], start: float, length: float,
                 period: Optional[float] = None) -> List[Note]:
  """The notes sounding in ``[start, start + length)``, relative to ``start``.

  Notes that began before the window are cut to start at 0; notes crossing the end
  are cut at the end. With ``period`` the piece repeats (a tune played again).

  Args:
    notes: (onset, duration, pitch) of the piece.
    start: window start, quarter notes.
    length: window length, quarter notes.
    period: repetition period of the piece, or None.

  Returns:
    The window's notes sorted by onset.
  """
  end = start + length
  out: List[Note] = []
  shifts = [0.0]
  if period:
    k_first = int(np.floor(start / period)) - 1
    k_last = int(np.ceil(end / period)) + 1
    shifts = [k * period for k in range(max(0, k_first), k_last)]
  for shift in shifts:
    for onset, duration, pitch in notes:
      a = onset + shift
      b = a + duration
      if b <= start + 1e-9 or a >= end - 1e-9:
        continue
      a2, b2 = max(a, start), min(b, end)
      if b2 - a2 < 1e-3:
        continue
      out.append((round(a2 - start, 6), round(b2 - a2, 6), int(pitch)))
  out.sort()
  return out


def window_beats(beats: Sequence[Sequence[float]], start: float, length: float,
                 period: Optional[float] = None) -> List[Tuple[float, int]]:
  """The beat grid inside the window, (onset relative to start, index in bar)."""
  end = start + length
  shifts = [0.0]
  if period:
    shifts = [k * period for k in range(max(0, int(np.floor(start / period)) - 1),
                                        int(np.ceil(end / period)) + 1)]
  out = []
  for shift in shifts:
    for offset, index in beats:
      t = offset + shift
      if start - 1e-9 <= t < end - 1e-9:
        out.append((round(t - start, 6), int(index)))
  out = sorted(set(out))
  return out


def drum_notes(kind: str, beats: Sequence[Tuple[float, int]], beat_quarters: float,
               length: float, compound: bool) -> List[Note]:
  """A drum pattern on the beat grid.

  ``kit``: kick on the bar's first beat (and its middle beat in 4-beat bars), snare on
  the other beats (backbeat), closed hi-hat on every subdivision (halves of the beat,
  thirds in compound meters), a crash on the first downbeat. ``hand``: low conga on
  the downbeat, high conga / bongos on the other beats and a shaker on subdivisions.

  Args:
    kind: "kit" or "hand".
    beats: (onset, index in bar) in quarter notes from the excerpt start.
    beat_quarters: length of one beat in quarter notes.
    length: excerpt length in quarter notes.
    compound: the meter is compound (beats divide in three).

  Returns:
    Drum notes (onset, duration, GM percussion key).
  """
  notes: List[Note] = []
  sub = 3 if compound else 2
  per_bar = (max(index for _, index in beats) + 1) if beats else 4
  crashed = False
  for onset, index in beats:
    hit = min(0.25, beat_quarters / sub)
    if kind == "kit":
      if index == 0 or (per_bar >= 4 and index == per_bar // 2):
        notes.append((onset, hit, KICK))
      else:
        notes.append((onset, hit, SNARE))
      if index == 0 and not crashed:
        notes.append((onset, hit, CRASH))
        crashed = True
      for k in range(sub):
        t = onset + k * beat_quarters / sub
        if t < length:
          notes.append((round(t, 6), hit, CLOSED_HAT))
    else:
      notes.append((onset, hit, LOW_CONGA if index == 0 else
                    (HIGH_CONGA if index % 2 else HIGH_BONGO)))
      for k in range(1, sub):
        t = onset + k * beat_quarters / sub
        if t < length:
          notes.append((round(t, 6), hit, SHAKER if k % 2 else MUTE_CONGA))
  notes.sort()
  return notes


def _fit_octave(notes: Sequence[Note], program: int) -> int:
  """Octaves to add so that most of a part lies in the program's range."""
  lo, hi = playable_range(program)
  pitches = sorted(p for _, _, p in notes)
  median = pitches[len(pitches) // 2]
  shift = 0
  while median + 12 * shift < lo and shift < 4:
    shift += 1
  while median + 12 * shift > hi and shift > -4:
    shift -= 1
  return shift


def _shift(notes: Sequence[Note], semitones: int) -> List[Note]:
  return [(a, d, int(np.clip(p + semitones, 0, 127))) for a, d, p in notes]


def playable_range(program: int) -> Tuple[int, int]:
  """The pitches a program may render: its range, capped at :data:`MAX_RENDER_PITCH`."""
  _, lo, hi = PROGRAMS[program]
  return lo, min(hi, MAX_RENDER_PITCH)


def fold_into_range(notes: Sequence[Note], program: int) -> List[Note]:
  """Moves notes outside the program's playable range by octaves into it (what a
  player does with a part written beyond the instrument)."""
  lo, hi = playable_range(program)
  out = []
  for onset, duration, pitch in notes:
    while pitch > hi:
      pitch -= 12
    while pitch < lo:
      pitch += 12
    out.append((onset, duration, pitch))
  return out


@dataclasses.dataclass
class Arrangement:
  """The arranged excerpt: tracks plus the transposition and register realised."""

  tracks: List[ArrangedTrack]
  transposition: int
  register_target: Optional[List[int]]


def arrange(plan: ClipPlan, piece_tracks: Sequence[Mapping[str, Any]],
            excerpt: Sequence[List[Note]], beats: Sequence[Tuple[float, int]],
            beat_quarters: float, length: float, compound: bool,
            rng: np.random.Generator) -> Arrangement:
  """Orchestrates one excerpt according to its plan.

  Args:
    plan: the clip's plan.
    piece_tracks: the piece's track descriptions (``role`` in the sidecar: melody,
      inner, chords, bass), high to low.
    excerpt: per piece track, its notes inside the excerpt window.
    beats: beat grid of the window (onset, index in bar).
    beat_quarters: beat length in quarter notes.
    length: window length in quarter notes.
    compound: compound meter.
    rng: the attempt's generator.

  Returns:
    The :class:`Arrangement`.

  Raises:
    ArrangementError: when this excerpt cannot realise the plan.
  """
  n_tracks = len(piece_tracks)
  melody_index = 0
  bass_index = n_tracks - 1
  velocity_lo, velocity_hi = DYNAMICS_VELOCITY[plan.dynamics]
  base_velocity = int(rng.integers(velocity_lo, velocity_hi + 1))

  def velocity(role):
    return int(np.clip(base_velocity + ROLE_VELOCITY_OFFSET[role], 1, 127))

  if not excerpt[melody_index]:
    raise ArrangementError("the melody rests throughout the excerpt")
  tracks: List[ArrangedTrack] = []
  transposition = 0
  register_target = None
  if plan.texture == "melody":
    melody = excerpt[melody_index]
    pitches = [p for _, _, p in melody]
    lo, hi = min(pitches), max(pitches)
    if plan.register == "low":
      top = int(rng.integers(LOW_MAX_PITCH - 4, LOW_MAX_PITCH + 1))
      transposition = top - hi
      register_target = [lo + transposition, top]
    elif plan.register == "high":
      bottom = int(rng.integers(HIGH_MIN_PITCH, HIGH_MIN_PITCH + 4))
      transposition = bottom - lo
      register_target = [bottom, hi + transposition]
    else:
      transposition = int(rng.integers(-4, 5))
    options = list(MELODY_PROGRAMS[plan.family])
    if register_target is not None:
      a, b = register_target
      # An instrument whose playable range holds the whole transposed melody, so that
      # no note is folded and the register is realised.
      options = [p for p in options
                 if playable_range(p)[0] <= a and playable_range(p)[1] >= b]
      if not options or abs(transposition) > 30:
        raise ArrangementError(f"excerpt range {lo}-{hi} does not fit a "
                               f"{plan.register} {plan.family} melody")
    program = _choice(rng, options)
    notes = _shift(melody, transposition)
    octave = 0 if register_target is not None else _fit_octave(notes, program)
    tracks.append(ArrangedTrack("melody", program, False,
                                fold_into_range(_shift(notes, 12 * octave), program),
                                velocity("melody"), [melody_index], octave))
  else:
    transposition = int(rng.integers(-4, 5))
    if plan.texture == "keyboard":
      program = _choice(rng, MELODY_PROGRAMS[plan.family])
      merged = sorted(n for part in excerpt for n in part)
      tracks.append(ArrangedTrack("keyboard", program, False,
                                  fold_into_range(_shift(merged, transposition), program),
                                  velocity("keyboard"), list(range(n_tracks))))
    else:
      if plan.texture == "duo":
        if n_tracks < 2:
          raise ArrangementError("a duo needs two parts")
        used = [melody_index, bass_index]
      else:
        if n_tracks < 3:
          raise ArrangementError("an ensemble needs three parts")
        used = list(range(n_tracks))
      roles = {i: piece_tracks[i]["role"] for i in used}
      roles[melody_index] = "melody"
      roles[bass_index] = "bass"
      programs = _ensemble_programs(plan, roles, rng)
      for i in used:
        notes = _shift(excerpt[i], transposition)
        if not notes:
          continue
        program = programs[i]
        octave = _fit_octave(notes, program)
        tracks.append(ArrangedTrack(roles[i], program, False,
                                    fold_into_range(_shift(notes, 12 * octave), program),
                                    velocity(roles[i] if roles[i] in ROLE_VELOCITY_OFFSET
                                             else "inner"), [i], octave))
  featured = INSTRUMENT_TAGS[plan.family]
  if not any(t.program in featured and t.notes for t in tracks):
    raise ArrangementError(f"featured {plan.family} does not sound in the excerpt")
  if plan.drums != "none":
    pattern = drum_notes(plan.drums, beats, beat_quarters, length, compound)
    if not pattern:
      raise ArrangementError("no beat inside the excerpt for the drum track")
    tracks.append(ArrangedTrack("drums", 0, True, pattern, velocity("drums"), [],
                                drum_kind=plan.drums))
  return Arrangement(tracks=tracks, transposition=transposition,
                     register_target=register_target)


def _ensemble_programs(plan: ClipPlan, roles: Mapping[int, str],
                       rng: np.random.Generator) -> Dict[int, int]:
  """Programs of a duo or ensemble: a homogeneous preset, or the featured family in
  one role and the style's defaults in the others."""
  family = plan.family
  presets = ENSEMBLE_PRESETS.get(family, ())
  def role_key(role):
    return "inner" if role in ("inner", "chords") else role
  if presets and (plan.texture == "ensemble" or family in BASS_FAMILIES) and rng.random() < 0.5:
    preset = _choice(rng, presets)
    programs = {}
    inner_count = 0
    for i in sorted(roles):
      key = role_key(roles[i])
      cycle = preset[key]
      if key == "inner":
        programs[i] = cycle[inner_count % len(cycle)]
        inner_count += 1
      else:
        programs[i] = _choice(rng, cycle)
    return programs
  available = {role_key(r) for r in roles.values()}
  featured_roles = [r for r in FAMILY_ROLES[family] if r in available]
  if not featured_roles:
    featured_roles = ["melody"]
  featured_role = _choice(rng, featured_roles)
  featured_program = _choice(rng, MELODY_PROGRAMS[family])
  defaults = {"melody": STYLE_MELODY[plan.style], "inner": STYLE_INNER[plan.style],
              "bass": STYLE_BASS[plan.style]}
  chosen = {key: (featured_program if key == featured_role else _choice(rng, defaults[key]))
            for key in ("melody", "inner", "bass")}
  return {i: chosen[role_key(role)] for i, role in roles.items()}
