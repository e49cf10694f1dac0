"""The package's one way of writing a file so that readers never see half of it."""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Union


def write_atomic(path: str, payload: Union[str, bytes]) -> str:
  """Writes ``payload`` to a temporary sibling of ``path``, then renames it into place.

  Local paths use the OS (no TensorFlow import, so light tools and worker processes
  stay light); other file systems (``gs://`` …) go through ``tf.io.gfile``. The
  temporary name is unique per process and call, so concurrent writers never share
  one. A reader (or a run killed half-way) sees the old file or the new one, never a
  mixture.

  Args:
    path: the destination file; its directory is created if needed.
    payload: text (written as UTF-8) or bytes.

  Returns:
    ``path``.
  """
  data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
  temporary = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  directory = posixpath.dirname(path)
  if "://" not in path:
    if directory:
      os.makedirs(directory, exist_ok=True)
    try:
      with open(temporary, "wb") as f:
        f.write(data)
      os.replace(temporary, path)
    except BaseException:
      if os.path.exists(temporary):
        os.remove(temporary)
      raise
    return path
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if directory:
    tf.io.gfile.makedirs(directory)
  try:
    with tf.io.gfile.GFile(temporary, "wb") as f:
      f.write(data)
    tf.io.gfile.rename(temporary, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(temporary):
      tf.io.gfile.remove(temporary)
    raise
  return path
