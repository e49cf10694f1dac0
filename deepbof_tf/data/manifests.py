"""Dataset manifests: which audio files make up a dataset, their split and their tags.

Two formats:

* **MagnaTagATune** ``annotations_final.csv``: *tab*-separated despite its
  name, every value double-quoted; columns ``clip_id``, the tag columns (188 in the
  public release, each 0/1) and ``mp3_path`` (e.g. ``f/artist-album-01-title-0-29.mp3``).
  The ``top_n_tags`` most frequent tags are kept (frequency = number of clips with the
  tag over all well-formed rows of the file; ties broken by column order), and the
  split is the standard one by the first character of the mp3's folder: ``0``–``b``
  train, ``c`` valid, ``d``–``f`` test.
* **CSV** with a header naming the columns ``path`` (required), ``split``, ``tags``
  and optionally ``clip_id`` (default: the path as written). ``tags`` is
  ``;``-separated; an empty ``split`` is assigned by a stable SHA-256 hash of the
  path (``deepbof_tf.seeds``; 80/10/10 train/valid/test), so the same path always
  lands in the same split.
  The tag vocabulary is ordered by decreasing frequency, then by name.

Malformed rows raise ``ValueError`` naming the file and the line number; with
``skip_bad_rows=True`` they are logged, skipped and listed in ``Manifest.skipped``.
Files are read with ``open`` for local paths and ``tf.io.gfile`` for URLs (gs://…),
so this module imports TensorFlow only when it needs it.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import logging
from typing import Dict, List, Optional, Sequence, Tuple

from deepbof_tf import seeds

SPLITS = ("train", "valid", "test")
# The tag vocabulary most MagnaTagATune work uses: the 50 most frequent tags.
DEFAULT_TOP_N_TAGS = 50
MTT_TRAIN_FOLDERS = frozenset("0123456789ab")
MTT_VALID_FOLDERS = frozenset("c")
MTT_TEST_FOLDERS = frozenset("def")
_SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid",
                  "validation": "valid", "val": "valid", "dev": "valid",
                  "test": "test", "eval": "test"}


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
  """One audio clip of a manifest.

  Args:
    clip_id: unique identifier of the clip (MTT: the ``clip_id`` column).
    path: the audio path as written in the manifest: relative to ``--audio_root``
      unless absolute or a URL (``gs://…``).
    split: "train", "valid" or "test".
    tags: the clip's tags that are in the manifest's vocabulary, in vocabulary order.
  """

  clip_id: str
  path: str
  split: str
  tags: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Manifest:
  """A parsed manifest.

  Args:
    entries: the clips, in file order.
    tags: the ordered tag vocabulary; the ``labels`` multi-hot of a clip indexes it.
    skipped: ``(line number, reason)`` of each malformed row skipped with
      ``skip_bad_rows=True`` (1-based line numbers, the header is line 1).
  """

  entries: List[ManifestEntry]
  tags: List[str]
  skipped: List[Tuple[int, str]] = dataclasses.field(default_factory=list)

  def labels(self, entry: ManifestEntry) -> List[float]:
    """The multi-hot label vector of ``entry`` over :attr:`tags`."""
    index = {tag: i for i, tag in enumerate(self.tags)}
    out = [0.0] * len(self.tags)
    for tag in entry.tags:
      out[index[tag]] = 1.0
    return out

  def split_counts(self) -> Dict[str, int]:
    counts = {split: 0 for split in SPLITS}
    for entry in self.entries:
      counts[entry.split] += 1
    return counts


class _RowError(ValueError):
  """A malformed row; carries only the reason (the caller adds file and line)."""


def _is_url(path: str) -> bool:
  return "://" in path


def _read_text(path: str) -> str:
  if _is_url(path):
    import tensorflow as tf  # deferred: only remote manifests need it
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f"{path}: manifest not found")
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read()
  else:
    with open(path, "rb") as f:
      data = f.read()
  try:
    # utf-8-sig drops a byte-order mark that spreadsheet exports like to add.
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: manifest is not UTF-8 text ({e})") from e


class _BadRows:
  """Collects malformed rows: raises at once, or logs and remembers them."""

  def __init__(self, path: str, skip: bool):
    self.path = path
    self.skip = skip
    self.skipped: List[Tuple[int, str]] = []

  def __call__(self, line: int, reason: str) -> None:
    if not self.skip:
      raise ValueError(f"{self.path}:{line}: {reason} (pass skip_bad_rows=True / "
                       "--skip_bad_rows to skip malformed rows)")
    logging.warning("%s:%d: skipping malformed row: %s", self.path, line, reason)
    self.skipped.append((line, reason))

  def summarize(self) -> None:
    if self.skipped:
      logging.warning("%s: skipped %d malformed row(s)", self.path, len(self.skipped))


def _top_tags(names: Sequence[str], counts: Sequence[int],
              top_n: Optional[int]) -> List[str]:
  """The ``top_n`` most frequent tags; ties keep the order of ``names``."""
  order = sorted(range(len(names)), key=lambda i: (-counts[i], i))
  if top_n is not None and top_n > 0:
    order = order[:top_n]
  return [names[i] for i in order]


def mtt_split(mp3_path: str) -> str:
  """The standard MagnaTagATune split of a clip from its folder.

  Args:
    mp3_path: the ``mp3_path`` column, e.g. ``f/artist-album-01-title-0-29.mp3``.

  Returns:
    "train" for folders ``0``–``b``, "valid" for ``c``, "test" for ``d``–``f``.

  Raises:
    ValueError: if the first character of the path is not a hexadecimal digit.
  """
  first = mp3_path.strip().lstrip("/")[:1].lower()
  if first in MTT_TRAIN_FOLDERS:
    return "train"
  if first in MTT_VALID_FOLDERS:
    return "valid"
  if first in MTT_TEST_FOLDERS:
    return "test"
  raise ValueError(f"mp3_path {mp3_path!r} does not start with a folder 0-9 or a-f")


def read_mtt_annotations(path: str, *, top_n_tags: int = DEFAULT_TOP_N_TAGS, drop_untagged: bool = False,
                         skip_bad_rows: bool = False) -> Manifest:
  """Reads MagnaTagATune's ``annotations_final.csv``.

  Args:
    path: local path or URL of ``annotations_final.csv``.
    top_n_tags: keep this many of the most frequent tags (0 keeps all); frequencies
      are counted over every well-formed row, ties are broken by column order.
    drop_untagged: drop clips that have none of the kept tags (the usual practice of
      the 50-tag split).
    skip_bad_rows: log and skip malformed rows instead of raising.

  Returns:
    The :class:`Manifest`; entry paths are the ``mp3_path`` column.

  Raises:
    ValueError: on a malformed header, or a malformed row unless ``skip_bad_rows``.
  """
  text = _read_text(path)
  reader = csv.reader(io.StringIO(text), delimiter="\t", quotechar='"')
  try:
    header = [h.strip() for h in next(reader)]
  except StopIteration:
    raise ValueError(f"{path}: empty file, expected the annotations_final.csv header")
  if len(header) < 3 or header[0] != "clip_id" or header[-1] != "mp3_path":
    raise ValueError(
        f"{path}:1: expected a tab-separated header 'clip_id', <tags>…, 'mp3_path' "
        f"(MagnaTagATune annotations_final.csv), got {header[:3]}…{header[-1:]}")
  tag_names = header[1:-1]
  duplicates = [t for t, c in collections.Counter(tag_names).items() if c > 1]
  if duplicates:
    raise ValueError(f"{path}:1: duplicate tag column(s) {duplicates}")
  bad = _BadRows(path, skip_bad_rows)
  rows: List[Tuple[str, str, List[int]]] = []
  seen: Dict[str, int] = {}
  counts = [0] * len(tag_names)
  line = 1
  for fields in reader:
    line = reader.line_num
    if not fields or all(not f.strip() for f in fields):
      continue  # blank lines (e.g. a trailing newline) are not rows
    try:
      if len(fields) != len(header):
        raise _RowError(f"expected {len(header)} tab-separated fields, got {len(fields)}")
      clip_id = fields[0].strip()
      mp3_path = fields[-1].strip()
      if not clip_id:
        raise _RowError("empty clip_id")
      if not mp3_path:
        raise _RowError(f"clip {clip_id}: empty mp3_path")
      try:
        mtt_split(mp3_path)  # validates the folder; the split is derived again below
      except ValueError as e:
        raise _RowError(f"clip {clip_id}: {e}") from None
      values = []
      for name, value in zip(tag_names, fields[1:-1]):
        value = value.strip()
        if value not in ("0", "1"):
          raise _RowError(f"clip {clip_id}: tag {name!r} must be 0 or 1, got {value!r}")
        values.append(int(value))
      if clip_id in seen:
        raise _RowError(f"duplicate clip_id {clip_id} (first on line {seen[clip_id]})")
    except _RowError as e:
      bad(line, str(e))
      continue
    seen[clip_id] = line
    rows.append((clip_id, mp3_path, values))
    for i, v in enumerate(values):
      counts[i] += v
  bad.summarize()
  vocabulary = _top_tags(tag_names, counts, top_n_tags)
  kept = [tag_names.index(t) for t in vocabulary]
  entries = []
  for clip_id, mp3_path, values in rows:
    tags = tuple(tag_names[i] for i in kept if values[i])
    if drop_untagged and not tags:
      continue
    entries.append(ManifestEntry(clip_id, mp3_path, mtt_split(mp3_path), tags))
  return Manifest(entries=entries, tags=vocabulary, skipped=bad.skipped)


def hash_split(path: str) -> str:
  """A stable 80/10/10 train/valid/test split of ``path`` (sha256, not ``hash()``)."""
  bucket = seeds.digest_int(path, size=8, algorithm="sha256") % 100
  if bucket < 80:
    return "train"
  return "valid" if bucket < 90 else "test"


def read_csv_manifest(path: str, *, top_n_tags: int = 0, drop_untagged: bool = False,
                      skip_bad_rows: bool = False) -> Manifest:
  """Reads a plain CSV manifest with a header ``path,split,tags`` (comma-separated).

  Args:
    path: local path or URL of the CSV file.
    top_n_tags: keep this many of the most frequent tags (0 keeps all).
    drop_untagged: drop clips that have none of the kept tags.
    skip_bad_rows: log and skip malformed rows instead of raising.

  Returns:
    The :class:`Manifest`. The vocabulary is ordered by decreasing frequency, then by
    name; an empty split is assigned by :func:`hash_split` of the path.

  Raises:
    ValueError: on a missing ``path`` column, or a malformed row (wrong field count,
      empty path, unknown split, duplicate clip_id) unless ``skip_bad_rows``.
  """
  text = _read_text(path)
  reader = csv.reader(io.StringIO(text))
  try:
    header = [h.strip().lower() for h in next(reader)]
  except StopIteration:
    raise ValueError(f"{path}: empty file, expected a header 'path,split,tags'")
  if "path" not in header:
    raise ValueError(f"{path}:1: the header must name a 'path' column "
                     f"(expected 'path,split,tags'), got {header}")
  unknown = [h for h in header if h not in ("path", "split", "tags", "clip_id")]
  if unknown:
    logging.warning("%s: ignoring unknown manifest column(s) %s", path, unknown)
  column = {name: header.index(name) for name in ("path", "split", "tags", "clip_id")
            if name in header}
  bad = _BadRows(path, skip_bad_rows)
  rows: List[Tuple[str, str, str, Tuple[str, ...]]] = []
  seen: Dict[str, int] = {}
  counts: Dict[str, int] = collections.Counter()
  for fields in reader:
    line = reader.line_num
    if not fields or all(not f.strip() for f in fields):
      continue
    try:
      if len(fields) != len(header):
        raise _RowError(f"expected {len(header)} comma-separated fields "
                        f"({','.join(header)}), got {len(fields)}")
      audio_path = fields[column["path"]].strip()
      if not audio_path:
        raise _RowError("empty path")
      split = fields[column["split"]].strip().lower() if "split" in column else ""
      if split:
        if split not in _SPLIT_ALIASES:
          raise _RowError(f"{audio_path}: unknown split {split!r} "
                          f"(expected train, valid or test, or empty)")
        split = _SPLIT_ALIASES[split]
      else:
        split = hash_split(audio_path)
      clip_id = fields[column["clip_id"]].strip() if "clip_id" in column else ""
      clip_id = clip_id or audio_path
      raw_tags = fields[column["tags"]] if "tags" in column else ""
      tags = tuple(dict.fromkeys(t.strip() for t in raw_tags.split(";") if t.strip()))
      if clip_id in seen:
        raise _RowError(f"duplicate clip_id {clip_id!r} (first on line {seen[clip_id]})")
    except _RowError as e:
      bad(line, str(e))
      continue
    seen[clip_id] = line
    rows.append((clip_id, audio_path, split, tags))
    counts.update(tags)
  bad.summarize()
  names = sorted(counts, key=lambda t: (-counts[t], t))
  vocabulary = names[:top_n_tags] if top_n_tags and top_n_tags > 0 else names
  kept = set(vocabulary)
  rank = {t: i for i, t in enumerate(vocabulary)}
  entries = []
  for clip_id, audio_path, split, tags in rows:
    tags = tuple(sorted((t for t in tags if t in kept), key=rank.__getitem__))
    if drop_untagged and not tags:
      continue
    entries.append(ManifestEntry(clip_id, audio_path, split, tags))
  return Manifest(entries=entries, tags=vocabulary, skipped=bad.skipped)


def read_manifest(path: str, manifest_format: str = "csv", **kwargs) -> Manifest:
  """Reads a manifest of either format.

  Args:
    path: local path or URL of the manifest.
    manifest_format: "csv" (:func:`read_csv_manifest`) or "mtt"
      (:func:`read_mtt_annotations`).
    **kwargs: forwarded to the reader (``top_n_tags``, ``drop_untagged``,
      ``skip_bad_rows``).

  Returns:
    The parsed :class:`Manifest`.
  """
  if manifest_format == "csv":
    return read_csv_manifest(path, **kwargs)
  if manifest_format == "mtt":
    return read_mtt_annotations(path, **kwargs)
  raise ValueError(f"unknown manifest_format {manifest_format!r}; expected 'csv' or 'mtt'")
