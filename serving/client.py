"""A client for a deepbof model served by TensorFlow Serving (REST or gRPC).

The client speaks TF Serving's two public APIs:

* REST: ``POST {url}/v1/models/{model_name}[/versions/{version}]:predict`` with a JSON
  body in the columnar (``{"inputs": {...}}``) or row (``{"instances": [...]}``)
  format; errors come back as ``{"error": "..."}`` with an HTTP status.
* gRPC: ``tensorflow.serving.PredictionService/Predict`` with a ``PredictRequest``
  (``tensorflow-serving-api``), errors as gRPC status codes.

Transient failures (HTTP 503, gRPC ``UNAVAILABLE``, refused or reset connections) are
retried with exponential backoff; a bad request (HTTP 400, ``INVALID_ARGUMENT``) is
never retried and raises :class:`TFServingError` carrying the server's message.

Example::

  client = TFServingClient(url="http://localhost:8501", model_name="deepbof")
  outputs = client.predict(waveforms)            # [batch, samples] float32 at 22,050 Hz
  outputs["probabilities"], outputs["embedding"]  # [batch, n_tags], [batch, 1024]

The REST path imports only the standard library and NumPy; the gRPC path imports
``grpc`` and ``tensorflow_serving`` (which imports TensorFlow) on first use.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

# Signature names of a deepbof export (defined in deepbof_tf.signatures).
from deepbof_tf.signatures import (  # noqa: F401  (re-exported)
    DEFAULT_SIGNATURE, PADDED_SIGNATURE, TAGS_SIGNATURE, WAV_SIGNATURE)

# HTTP statuses TF Serving uses for transient conditions. 503 is UNAVAILABLE (model
# still loading, server overloaded or shutting down); 502/504 come from proxies in
# front of it. 400 (INVALID_ARGUMENT), 404 (NOT_FOUND) and 500 are never retried.
_RETRYABLE_HTTP = frozenset({502, 503, 504})
_HTTP_CODE_NAMES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED",
                    409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                    501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
                    504: "DEADLINE_EXCEEDED"}

Waveforms = Union[np.ndarray, Sequence[np.ndarray], Sequence[Sequence[float]]]


class TFServingError(RuntimeError):
  """A request to TF Serving failed.

  Attributes:
    code: the canonical status name (``"INVALID_ARGUMENT"``, ``"UNAVAILABLE"``, ...).
    http_status: the HTTP status of a REST call (None for gRPC).
    attempts: how many times the request was sent.
  """

  def __init__(self, message: str, code: str = "UNKNOWN",
               http_status: Optional[int] = None, attempts: int = 1):
    super().__init__(message)
    self.code = code
    self.http_status = http_status
    self.attempts = attempts


class _Retryable(Exception):
  """Internal: a transient failure worth another attempt."""

  def __init__(self, error: TFServingError):
    super().__init__(str(error))
    self.error = error


def pad_waveforms(waveforms: Waveforms) -> tuple[np.ndarray, np.ndarray]:
  """Stacks mono waveforms of any lengths into a zero-padded batch.

  Args:
    waveforms: a [batch, samples] array, one [samples] array, or a sequence of 1-D
      arrays of possibly different lengths.

  Returns:
    ``(batch [B, max_samples] float32, num_samples [B] int32)``.
  """
  if isinstance(waveforms, np.ndarray) and waveforms.ndim == 2:
    batch = np.asarray(waveforms, dtype=np.float32)
    return batch, np.full([batch.shape[0]], batch.shape[1], dtype=np.int32)
  if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
    waveforms = [waveforms]
  rows = [np.asarray(w, dtype=np.float32) for w in waveforms]
  for i, row in enumerate(rows):
    if row.ndim != 1:
      raise ValueError(f"waveform {i}: expected a mono 1-D array, got shape {row.shape}")
  lengths = np.array([row.shape[0] for row in rows], dtype=np.int32)
  batch = np.zeros([len(rows), int(lengths.max()) if rows else 0], dtype=np.float32)
  for i, row in enumerate(rows):
    batch[i, :row.shape[0]] = row
  return batch, lengths


class TFServingClient:
  """Calls a deepbof model on TF Serving over REST (``url``) or gRPC (``grpc_target``).

  Args:
    url: REST base address, e.g. ``"http://localhost:8501"``.
    grpc_target: gRPC address, e.g. ``"localhost:8500"``. Give exactly one of the two.
    model_name: the model's name in TF Serving's model config.
    signature_name: signature used by :meth:`predict` for equal-length batches.
    padded_signature_name: signature used when lengths differ (``num_samples`` given
      or ragged input).
    version: pin a model version (None: the server's latest/default).
    timeout: seconds per attempt (connect + response).
    max_retries: extra attempts after a transient failure (0 disables retrying).
    backoff: seconds before the first retry; doubles on every further retry.
    max_backoff: upper bound of one wait.
    request_format: REST body format, ``"inputs"`` (columnar) or ``"instances"`` (row).
    sleep: the function used to wait between retries (tests replace it).
  """

  def __init__(self, url: Optional[str] = None, grpc_target: Optional[str] = None,
               model_name: str = "deepbof",
               signature_name: str = DEFAULT_SIGNATURE,
               padded_signature_name: str = PADDED_SIGNATURE,
               version: Optional[int] = None, timeout: float = 60.0,
               max_retries: int = 3, backoff: float = 0.5, max_backoff: float = 8.0,
               request_format: str = "inputs",
               sleep: Callable[[float], None] = time.sleep):
    if (url is None) == (grpc_target is None):
      raise ValueError("give exactly one of url= (REST) or grpc_target= (gRPC)")
    if request_format not in ("inputs", "instances"):
      raise ValueError(f"request_format must be 'inputs' or 'instances', got {request_format!r}")
    if max_retries < 0 or backoff < 0 or timeout <= 0:
      raise ValueError("max_retries and backoff must be >= 0 and timeout > 0")
    self.url = url.rstrip("/") if url else None
    self.grpc_target = grpc_target
    self.model_name = model_name
    self.signature_name = signature_name
    self.padded_signature_name = padded_signature_name
    self.version = version
    self.timeout = float(timeout)
    self.max_retries = int(max_retries)
    self.backoff = float(backoff)
    self.max_backoff = float(max_backoff)
    self.request_format = request_format
    self._sleep = sleep
    self._channel = None
    self._stub = None

  # --- public API --------------------------------------------------------------------

  def predict(self, waveforms: Waveforms,
              num_samples: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
    """Tags mono float32 waveforms at the model's sample rate (22,050 Hz).

    Args:
      waveforms: a [batch, samples] array (all rows full length), one [samples]
        array, or a list of 1-D arrays of different lengths (zero-padded here and sent
        with their lengths to the padded signature).
      num_samples: valid length of each row of a padded [batch, samples] array.

    Returns:
      ``{"probabilities": [batch, n_tags], "embedding": [batch, 1024]}`` as NumPy.
    """
    ragged = not (isinstance(waveforms, np.ndarray) and waveforms.ndim == 2)
    batch, lengths = pad_waveforms(waveforms)
    if num_samples is not None:
      lengths = np.asarray(num_samples, dtype=np.int32).reshape([-1])
      if lengths.shape[0] != batch.shape[0]:
        raise ValueError(f"num_samples has {lengths.shape[0]} entries for "
                         f"{batch.shape[0]} waveforms")
    if num_samples is None and not (ragged and len(set(lengths.tolist())) > 1):
      return self.call(self.signature_name, {"waveform": batch})
    return self.call(self.padded_signature_name,
                     {"waveform": batch, "num_samples": lengths})

  def predict_wav(self, wav_files: Sequence[bytes]) -> Dict[str, np.ndarray]:
    """Tags WAV files (16-bit PCM at the model's sample rate) sent as bytes.

    Args:
      wav_files: the files' contents, one ``bytes`` per clip.
    """
    contents = np.array([bytes(w) for w in wav_files], dtype=object)
    return self.call(WAV_SIGNATURE, {"wav": contents})

  def tags(self) -> List[str]:
    """The model's ordered tag names (the ``tags`` signature)."""
    outputs = self.call(TAGS_SIGNATURE, {})
    # REST answers for a single-output signature carry no output name.
    names = outputs["tags"] if "tags" in outputs else outputs["output"]
    return [t.decode("utf-8") if isinstance(t, bytes) else str(t)
            for t in np.asarray(names).ravel()]

  def call(self, signature_name: str,
           inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Calls any signature with named inputs; retries transient failures.

    Args:
      signature_name: the SavedModel signature.
      inputs: input name → array (object arrays of ``bytes`` for string inputs).

    Returns:
      output name → NumPy array.
    """
    send = self._rest_predict if self.url else self._grpc_predict
    attempt = 0
    while True:
      attempt += 1
      try:
        return send(signature_name, inputs)
      except _Retryable as retryable:
        if attempt > self.max_retries:
          error = retryable.error
          raise TFServingError(
              f"{error} (gave up after {attempt} attempt{'s' if attempt > 1 else ''})",
              code=error.code, http_status=error.http_status, attempts=attempt) from None
        self._sleep(min(self.backoff * (2.0 ** (attempt - 1)), self.max_backoff))
      except TFServingError as error:
        error.attempts = attempt
        raise

  def close(self) -> None:
    """Closes the gRPC channel (no-op for REST)."""
    if self._channel is not None:
      self._channel.close()
      self._channel = None
      self._stub = None

  def __enter__(self) -> "TFServingClient":
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

  # --- REST --------------------------------------------------------------------------

  def _rest_address(self) -> str:
    path = f"{self.url}/v1/models/{self.model_name}"
    if self.version is not None:
      path += f"/versions/{int(self.version)}"
    return path + ":predict"

  def _rest_body(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> bytes:
    columns = {name: _to_json_value(np.asarray(value)) for name, value in inputs.items()}
    body: Dict[str, Any] = {"signature_name": signature_name}
    if self.request_format == "inputs" or not inputs:
      body["inputs"] = columns
    else:
      sizes = {name: len(value) for name, value in columns.items()}
      if len(set(sizes.values())) != 1:
        raise ValueError(f"row format needs inputs with equal batch sizes, got {sizes}")
      n = next(iter(sizes.values()))
      if len(columns) == 1:
        body["instances"] = next(iter(columns.values()))
      else:
        body["instances"] = [{name: value[i] for name, value in columns.items()}
                             for i in range(n)]
    return json.dumps(body).encode("utf-8")

  def _rest_predict(self, signature_name: str,
                    inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    address = self._rest_address()
    request = urllib.request.Request(
        address, data=self._rest_body(signature_name, inputs), method="POST",
        headers={"Content-Type": "application/json"})
    try:
      with urllib.request.urlopen(request, timeout=self.timeout) as response:
        payload = response.read()
    except urllib.error.HTTPError as error:
      message = clean_message(_rest_error_message(error))
      code = _HTTP_CODE_NAMES.get(error.code, "UNKNOWN")
      failure = TFServingError(
          f"{address} ({signature_name}): HTTP {error.code} {code}: {message}",
          code=code, http_status=error.code)
      if error.code in _RETRYABLE_HTTP:
        raise _Retryable(failure) from None
      raise failure from None
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as error:
      reason = getattr(error, "reason", error)
      if isinstance(reason, (socket.timeout, TimeoutError)):
        raise TFServingError(f"{address}: no answer within {self.timeout:g} s",
                             code="DEADLINE_EXCEEDED") from None
      raise _Retryable(TFServingError(f"{address}: cannot connect ({reason})",
                                      code="UNAVAILABLE")) from None
    except (socket.timeout, TimeoutError):
      raise TFServingError(f"{address}: no answer within {self.timeout:g} s",
                           code="DEADLINE_EXCEEDED") from None
    try:
      decoded = json.loads(payload)
    except ValueError as error:
      raise TFServingError(f"{address}: response is not JSON ({error})",
                           code="INTERNAL") from None
    if "error" in decoded:
      raise TFServingError(f"{address} ({signature_name}): "
                           f"{clean_message(decoded['error'])}")
    return _parse_rest_outputs(decoded)

  # --- gRPC --------------------------------------------------------------------------

  def _grpc_stub(self):
    if self._stub is None:
      import grpc  # deferred: the REST path must not pay for grpc/TensorFlow imports
      from tensorflow_serving.apis import prediction_service_pb2_grpc
      # Batches of 30-s waveforms exceed gRPC's 4 MB default message size.
      self._channel = grpc.insecure_channel(self.grpc_target, options=[
          ("grpc.max_send_message_length", -1),
          ("grpc.max_receive_message_length", -1)])
      self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
    return self._stub

  def _grpc_predict(self, signature_name: str,
                    inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2
    stub = self._grpc_stub()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = self.model_name
    request.model_spec.signature_name = signature_name
    if self.version is not None:
      request.model_spec.version.value = int(self.version)
    for name, value in inputs.items():
      request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
    try:
      response = stub.Predict(request, timeout=self.timeout)
    except grpc.RpcError as error:
      code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
      failure = TFServingError(
          f"{self.grpc_target} {self.model_name} ({signature_name}): {code.name}: "
          f"{clean_message(error.details() if hasattr(error, 'details') else error)}",
          code=code.name)
      if code == grpc.StatusCode.UNAVAILABLE:
        raise _Retryable(failure) from None
      raise failure from None
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def _to_json_value(array: np.ndarray) -> Any:
  """A NumPy array as TF Serving's JSON: numbers as lists, bytes as ``{"b64": ...}``."""
  if array.dtype == object or array.dtype.kind in ("S", "U"):
    def encode(item: Any) -> Any:
      if isinstance(item, (bytes, np.bytes_)):
        return {"b64": base64.b64encode(bytes(item)).decode("ascii")}
      return str(item)
    if array.ndim == 0:
      return encode(array.item())
    return [(_to_json_value(np.asarray(row, dtype=object)) if np.ndim(row) else encode(row))
            for row in array]
  return array.tolist()


def _from_json_value(value: Any) -> np.ndarray:
  array = np.asarray(value)
  if array.dtype.kind == "f":
    return array.astype(np.float32)
  if array.dtype.kind in ("U", "O"):
    return np.asarray(value, dtype=object)
  return array


def _parse_rest_outputs(decoded: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """Output arrays of a TF Serving REST answer in either format."""
  if "outputs" in decoded:
    outputs = decoded["outputs"]
    if isinstance(outputs, dict):
      return {name: _from_json_value(value) for name, value in outputs.items()}
    return {"output": _from_json_value(outputs)}
  if "predictions" in decoded:
    rows = decoded["predictions"]
    if rows and isinstance(rows[0], dict):
      return {name: _from_json_value([row[name] for row in rows]) for name in rows[0]}
    return {"output": _from_json_value(rows)}
  raise TFServingError(f"unexpected TF Serving answer with keys {sorted(decoded)}",
                       code="INTERNAL")


def clean_message(message: str) -> str:
  """A TensorFlow error message without graph-execution noise (node names, stacks)."""
  kept = []
  for line in str(message).splitlines():
    stripped = line.strip()
    if (not stripped or stripped == "Graph execution error:" or
        stripped.startswith("Detected at node") or
        stripped == "<stack traces unavailable>" or stripped.startswith("[[{{")):
      continue
    kept.append(stripped.split(" [Op:", 1)[0])
  return " ".join(kept) or str(message).strip()


def _rest_error_message(error: urllib.error.HTTPError) -> str:
  try:
    body = error.read().decode("utf-8", errors="replace")
  except Exception:  # pylint: disable=broad-except
    return error.reason or ""
  try:
    return str(json.loads(body).get("error", body))
  except (ValueError, AttributeError):
    return body.strip() or str(error.reason)
