"""write_atomic: whole files or nothing, text and bytes, no litter, nested directories."""

import os

import pytest

from deepbof_tf import io_utils


def test_write_atomic_text_bytes_and_replacement(tmp_path):
  path = str(tmp_path / "a" / "b" / "f.json")
  assert io_utils.write_atomic(path, "ünïcode\n") == path
  assert open(path, encoding="utf-8").read() == "ünïcode\n"
  io_utils.write_atomic(path, b"\x00\x01")
  assert open(path, "rb").read() == b"\x00\x01"
  assert os.listdir(os.path.dirname(path)) == ["f.json"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_litter(tmp_path):
  path = str(tmp_path / "f.txt")
  io_utils.write_atomic(path, "old")

  class Broken:
    def encode(self, _):
      raise RuntimeError("boom")

  with pytest.raises(Exception):
    io_utils.write_atomic(path, Broken())
  assert open(path).read() == "old"
  assert os.listdir(tmp_path) == ["f.txt"]
