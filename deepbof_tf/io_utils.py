"""The package's one way of writing a file so that readers never see half of it."""

from __future__ import annotations

import json
import math
import os
import posixpath
import uuid
from typing import Any, Mapping, Union

import numpy as np


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


def json_safe(value: Any) -> Any:
  """Replaces NaN/inf floats by None (strict JSON) and NumPy scalars by Python ones."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, (np.floating,)):
    return json_safe(float(value))
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, Mapping):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  return value


def write_json(path: str, payload: Mapping[str, Any]) -> str:
  """Publishes ``payload`` as strict, indented, key-sorted JSON (``write_atomic``).

  Args:
    path: the destination file (local or any ``tf.io.gfile`` file system).
    payload: a JSON-serialisable mapping; NaN/inf become null (``json_safe``).

  Returns:
    ``path``.
  """
  return write_atomic(path, json.dumps(json_safe(payload), indent=2, sort_keys=True)
                      + "\n")
