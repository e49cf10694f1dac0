"""Manifests: MagnaTagATune annotations_final.csv (real layout) and plain CSV."""

import collections

import pytest

from deepbof_tf.data import manifests

# The 188 tag columns of MagnaTagATune's annotations_final.csv, in file order.
_MTT_TAGS = ("no voice", "singer", "duet", "plucking", "hard rock", "world", "bongos",
    "harpsichord", "female singing", "clasical", "sitar", "chorus", "female opera",
    "male vocal", "vocals", "clarinet", "heavy", "silence", "beats", "men", "woodwind",
    "funky", "no strings", "chimes", "foreign", "no piano", "horns", "classical",
    "female", "no voices", "soft rock", "eerie", "spacey", "jazz", "guitar", "quiet",
    "no beat", "banjo", "electric", "solo", "violins", "folk", "female voice", "wind",
    "happy", "ambient", "new age", "synth", "funk", "no singing", "middle eastern",
    "trumpet", "percussion", "drum", "airy", "voice", "repetitive", "birds", "space",
    "strings", "bass", "harpsicord", "medieval", "male voice", "girl", "keyboard",
    "acoustic", "loud", "classic", "string", "drums", "electronic", "not classical",
    "chanting", "no violin", "not rock", "no guitar", "organ", "no vocal", "talking",
    "choral", "weird", "opera", "soprano", "fast", "acoustic guitar",
    "electric guitar", "male singer", "man singing", "classical guitar", "country",
    "violin", "electro", "reggae", "tribal", "dark", "male opera", "no vocals",
    "irish", "electronica", "horn", "operatic", "arabic", "lol", "low", "instrumental",
    "trance", "chant", "strange", "drone", "synthesizer", "heavy metal", "modern",
    "disco", "bells", "man", "deep", "fast beat", "industrial", "hard", "harp",
    "no flute", "jungle", "pop", "lute", "female vocal", "oboe", "mellow",
    "orchestral", "viola", "light", "echo", "piano", "celtic", "male vocals",
    "orchestra", "eastern", "old", "flutes", "punk", "spanish", "sad", "sax", "slow",
    "male", "blues", "vocal", "indian", "no singer", "scary", "india", "woman",
    "woman singing", "rock", "dance", "piano solo", "guitars", "no drums", "jazzy",
    "singing", "cello", "calm", "female vocals", "voices", "different", "techno",
    "clapping", "house", "monks", "flute", "not opera", "not english", "oriental",
    "beat", "upbeat", "soft", "noise", "choir", "female singer", "rap", "metal",
    "hip hop", "quick", "water", "baroque", "women", "fiddle", "english")


def _mtt_line(values):
  # The real file: every value double-quoted, tab-separated.
  return "\t".join(f'"{v}"' for v in values) + "\n"


def _mtt_row(clip_id, mp3_path, tags):
  unknown = set(tags) - set(_MTT_TAGS)
  assert not unknown, unknown  # a fixture typo, not an input check
  return [str(clip_id)] + ["1" if t in tags else "0" for t in _MTT_TAGS] + [mp3_path]


# Frequencies: classical 5, guitar 5 (tie: classical's column comes first), slow 4,
# techno 4 (tie with slow: slow's column comes first), piano 2, rock 1.
_ROWS = [
    (2, "f/american_bach_soloists-j_s__bach_solo_cantatas-01-bwv54__i_aria-0-29.mp3",
     {"classical", "slow", "piano"}),
    (6, "0/artist_a-album-01-intro-0-29.mp3", {"classical", "guitar", "slow"}),
    (10, "b/artist_b-album-02-song-30-59.mp3", {"guitar", "techno"}),
    (11, "c/artist_c-album-03-song-0-29.mp3", {"classical", "techno", "slow"}),
    (12, "d/artist_d-album-04-song-58-87.mp3", {"guitar", "techno", "rock"}),
    (15, "9/artist_e-album-05-song-0-29.mp3", {"classical", "guitar", "techno", "piano"}),
    (16, "e/artist_f-album-06-song-0-29.mp3", {"classical", "guitar", "slow"}),
    (20, "a/artist_g-album-07-song-0-29.mp3", set()),
    (21, "3/artist_h-album-08-song-0-29.mp3", {"rock"}),
]


def _write_mtt(tmp_path, rows=_ROWS, extra_lines=()):
  path = tmp_path / "annotations_final.csv"
  text = _mtt_line(["clip_id"] + list(_MTT_TAGS) + ["mp3_path"])
  text += "".join(_mtt_line(_mtt_row(*row)) for row in rows)
  text += "".join(extra_lines)
  path.write_text(text)
  return str(path)


def test_mtt_fixture_has_the_real_layout(tmp_path):
  header = open(_write_mtt(tmp_path)).readline()
  assert header.count("\t") == 189  # clip_id + 188 tags + mp3_path
  assert header.startswith('"clip_id"\t"no voice"\t"singer"')


def test_mtt_top_n_tags_by_frequency_ties_by_column_order(tmp_path):
  manifest = manifests.read_mtt_annotations(_write_mtt(tmp_path), top_n_tags=3)
  assert manifest.tags == ["classical", "guitar", "slow"]
  manifest = manifests.read_mtt_annotations(_write_mtt(tmp_path), top_n_tags=5)
  assert manifest.tags == ["classical", "guitar", "slow", "techno", "piano"]
  by_id = {e.clip_id: e for e in manifest.entries}
  assert by_id["15"].tags == ("classical", "guitar", "techno", "piano")
  assert by_id["21"].tags == ()  # rock is not among the top 5
  assert manifest.labels(by_id["15"]) == [1.0, 1.0, 0.0, 1.0, 1.0]
  all_tags = manifests.read_mtt_annotations(_write_mtt(tmp_path), top_n_tags=0).tags
  assert len(all_tags) == 188
  assert all_tags[:7] == ["classical", "guitar", "slow", "techno", "piano", "rock",
                          "no voice"]  # then the zero-count tags in column order


def test_mtt_split_by_folder(tmp_path):
  manifest = manifests.read_mtt_annotations(_write_mtt(tmp_path))
  splits = {e.clip_id: e.split for e in manifest.entries}
  assert splits == {"2": "test", "6": "train", "10": "train", "11": "valid",
                    "12": "test", "15": "train", "16": "test", "20": "train",
                    "21": "train"}
  assert manifest.split_counts() == {"train": 5, "valid": 1, "test": 3}
  assert [e.path for e in manifest.entries][:2] == [_ROWS[0][1], _ROWS[1][1]]
  for folder, split in zip("0123456789abcdef", ["train"] * 12 + ["valid"] + ["test"] * 3):
    assert manifests.mtt_split(f"{folder}/x.mp3") == split


def test_mtt_drop_untagged(tmp_path):
  kept = manifests.read_mtt_annotations(_write_mtt(tmp_path), top_n_tags=3,
                                        drop_untagged=True)
  # clip 20 has no tag at all; 21 has none of classical/guitar/slow.
  assert sorted(int(e.clip_id) for e in kept.entries) == [2, 6, 10, 11, 12, 15, 16]
  everything = manifests.read_mtt_annotations(_write_mtt(tmp_path), top_n_tags=3)
  assert len(everything.entries) == 9


@pytest.mark.parametrize("bad_line, reason", [
    (_mtt_line(["30"] + ["0"] * 187 + ["1/x.mp3"]), "expected 190 tab-separated fields"),
    (_mtt_line(["31"] + ["0"] * 187 + ["2"] + ["1/x.mp3"]), "must be 0 or 1"),
    (_mtt_line(["32"] + ["0"] * 188 + ["g/x.mp3"]), "does not start with a folder"),
    (_mtt_line(["33"] + ["0"] * 188 + [""]), "empty mp3_path"),
    (_mtt_line(["6"] + ["0"] * 188 + ["1/y.mp3"]), "duplicate clip_id 6"),
])
def test_mtt_malformed_rows(tmp_path, bad_line, reason):
  path = _write_mtt(tmp_path, extra_lines=[bad_line, _mtt_line(_mtt_row(40, "5/z.mp3",
                                                                        {"rock"}))])
  bad_line_number = 1 + len(_ROWS) + 1
  with pytest.raises(ValueError, match=rf"annotations_final.csv:{bad_line_number}: .*{reason}"):
    manifests.read_mtt_annotations(path)
  manifest = manifests.read_mtt_annotations(path, skip_bad_rows=True)
  assert [line for line, _ in manifest.skipped] == [bad_line_number]
  assert reason in manifest.skipped[0][1]
  assert len(manifest.entries) == len(_ROWS) + 1  # the row after the bad one is kept
  # Skipped rows do not count towards the tag frequencies.
  assert manifest.tags[:3] == ["classical", "guitar", "slow"]


def test_mtt_rejects_a_comma_separated_file(tmp_path):
  path = tmp_path / "annotations_final.csv"
  path.write_text("clip_id,guitar,mp3_path\n1,1,0/a.mp3\n")
  with pytest.raises(ValueError, match="annotations_final.csv:1: expected a tab-separated"):
    manifests.read_mtt_annotations(str(path))


def _write_csv(tmp_path, text, name="manifest.csv"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_csv_manifest_vocabulary_order_and_labels(tmp_path):
  path = _write_csv(tmp_path, "path,split,tags\n"
                    "a.wav,train,rock;guitar\n"
                    "b.mp3,valid,guitar\n"
                    "c.flac,test,jazz;rock\n"
                    "d.ogg,train,\n"
                    "/abs/e.wav,validation, piano ;rock\n")
  manifest = manifests.read_csv_manifest(path)
  # Frequency first (rock 3, guitar 2), then name (jazz < piano).
  assert manifest.tags == ["rock", "guitar", "jazz", "piano"]
  assert [(e.clip_id, e.split, e.tags) for e in manifest.entries] == [
      ("a.wav", "train", ("rock", "guitar")), ("b.mp3", "valid", ("guitar",)),
      ("c.flac", "test", ("rock", "jazz")), ("d.ogg", "train", ()),
      ("/abs/e.wav", "valid", ("rock", "piano"))]
  assert manifest.labels(manifest.entries[2]) == [1.0, 0.0, 1.0, 0.0]
  top2 = manifests.read_csv_manifest(path, top_n_tags=2, drop_untagged=True)
  assert top2.tags == ["rock", "guitar"]
  assert [e.path for e in top2.entries] == ["a.wav", "b.mp3", "c.flac", "/abs/e.wav"]


def test_csv_manifest_hash_split_is_stable_and_80_10_10(tmp_path):
  paths = [f"music/track_{i:05d}.mp3" for i in range(5000)]
  path = _write_csv(tmp_path, "path,split,tags\n" + "".join(f"{p},,\n" for p in paths))
  manifest = manifests.read_csv_manifest(path)
  counts = collections.Counter(e.split for e in manifest.entries)
  assert abs(counts["train"] / 5000 - 0.8) < 0.02
  assert abs(counts["valid"] / 5000 - 0.1) < 0.015
  assert abs(counts["test"] / 5000 - 0.1) < 0.015
  # Stable: the same path gets the same split in another file order and another call.
  reversed_path = _write_csv(tmp_path, "tags,path\n" + "".join(f",{p}\n" for p in paths[::-1]),
                             name="reversed.csv")
  again = {e.path: e.split for e in manifests.read_csv_manifest(reversed_path).entries}
  assert all(again[e.path] == e.split for e in manifest.entries)
  assert manifests.hash_split("music/track_00000.mp3") == manifest.entries[0].split


def test_csv_manifest_clip_id_column(tmp_path):
  path = _write_csv(tmp_path, "clip_id,path,split,tags\n7,x/a.wav,train,a\n8,x/b.wav,test,b\n")
  manifest = manifests.read_manifest(path, "csv")
  assert [e.clip_id for e in manifest.entries] == ["7", "8"]


@pytest.mark.parametrize("bad_row, reason", [
    ("c.wav,train\n", "expected 3 comma-separated fields"),
    (",train,rock\n", "empty path"),
    ("c.wav,holdout,rock\n", "unknown split 'holdout'"),
    ("a.wav,test,rock\n", "duplicate clip_id 'a.wav'"),
])
def test_csv_manifest_malformed_rows(tmp_path, bad_row, reason):
  path = _write_csv(tmp_path, "path,split,tags\na.wav,train,rock\n" + bad_row +
                    "b.wav,test,jazz\n")
  with pytest.raises(ValueError, match=rf"manifest.csv:3: .*{reason}"):
    manifests.read_csv_manifest(path)
  manifest = manifests.read_manifest(path, "csv", skip_bad_rows=True)
  assert [line for line, _ in manifest.skipped] == [3]
  assert reason in manifest.skipped[0][1]
  assert [e.path for e in manifest.entries] == ["a.wav", "b.wav"]


def test_csv_manifest_requires_a_path_column(tmp_path):
  with pytest.raises(ValueError, match="must name a 'path' column"):
    manifests.read_csv_manifest(_write_csv(tmp_path, "file,split\na.wav,train\n"))


def test_read_manifest_dispatch_and_url(tmp_path):
  path = _write_mtt(tmp_path)
  via_url = manifests.read_manifest("file://" + path, "mtt", top_n_tags=2)
  assert via_url.tags == ["classical", "guitar"]
  with pytest.raises(ValueError, match="unknown manifest_format 'tsv'"):
    manifests.read_manifest(path, "tsv")
