"""The package's one way of writing a file so that readers never see half of it."""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Union

import tensorflow as tf


def write_atomic(path: str, payload: Union[str, bytes]) -> str:
  """Writes ``payload`` to a temporary sibling of ``path``, then renames it into place.

  Works on every ``tf.io.gfile`` file system (local, ``gs://``, …); the temporary name
  is unique per process and call, so concurrent writers never share one. A reader (or a
  run killed half-way) sees the old file or the new one, never a mixture.

  Args:
    path: the destination file; its directory is created if needed.
    payload: text (written as UTF-8) or bytes.

  Returns:
    ``path``.
  """
  directory = posixpath.dirname(path)
  if directory:
    tf.io.gfile.makedirs(directory)
  temporary = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  mode = "wb" if isinstance(payload, (bytes, bytearray)) else "w"
  try:
    with tf.io.gfile.GFile(temporary, mode) as f:
      f.write(payload)
    tf.io.gfile.rename(temporary, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(temporary):
      tf.io.gfile.remove(temporary)
    raise
  return path
