"""TEST DOUBLE of TensorFlow Serving's predict APIs — for tests only, never shipped.

Real deployments run the ``tensorflow/serving`` binary (see serving/README.md). These
loopback servers stand in for it in tests: they load a SavedModel with
``tf.saved_model.load`` and answer TF Serving's REST predict contract
(``POST /v1/models/NAME[/versions/N]:predict``, columnar ``inputs`` or row
``instances`` JSON, ``{"error": ...}`` with HTTP 400/404/503) and its gRPC
``PredictionService.Predict`` (``tensorflow-serving-api`` protos, gRPC status codes).
Request validation follows TF Serving's rules where the client can observe them
(input names must match the signature, dtypes are checked or converted as TF Serving
does, InvalidArgument from the graph becomes HTTP 400 / ``INVALID_ARGUMENT``).

Both doubles can inject transient failures (``fail_next``) to test client retries,
and count the requests they receive.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import threading
from concurrent import futures
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf


class ServingFault(Exception):
  """An error the double answers with: canonical code name + message."""

  def __init__(self, code: str, message: str):
    super().__init__(message)
    self.code = code
    self.message = message


_HTTP_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "NOT_FOUND": 404,
                "UNAVAILABLE": 503, "INTERNAL": 500, "UNKNOWN": 500}


def _latest_version_dir(base_dir: str) -> Tuple[int, str]:
  versions = sorted(int(name) for name in os.listdir(base_dir) if name.isdigit())
  if not versions:
    raise FileNotFoundError(f"{base_dir}: no integer version directory")
  return versions[-1], os.path.join(base_dir, str(versions[-1]))


class SavedModelPredictor:
  """Runs signatures of the latest version under ``base_dir`` like TF Serving does.

  Args:
    base_dir: a TF Serving model base path (integer version subdirectories).
    model_name: the name requests must use.
  """

  def __init__(self, base_dir: str, model_name: str):
    self.model_name = model_name
    self.version, version_dir = _latest_version_dir(base_dir)
    self._loaded = tf.saved_model.load(version_dir)
    self._lock = threading.Lock()
    self._faults: List[ServingFault] = []
    self.requests = 0

  def fail_next(self, count: int, code: str = "UNAVAILABLE",
                message: str = "test double: server overloaded, try again") -> None:
    """The next ``count`` requests fail with ``code`` before reaching the model."""
    with self._lock:
      self._faults.extend(ServingFault(code, message) for _ in range(count))

  def clear_faults(self) -> None:
    """Drops injected failures that were not consumed."""
    with self._lock:
      self._faults.clear()

  def signature_inputs(self, signature_name: str) -> Dict[str, tf.TensorSpec]:
    return dict(self._signature(signature_name).structured_input_signature[1])

  def _signature(self, signature_name: str):
    if signature_name not in self._loaded.signatures:
      raise ServingFault("FAILED_PRECONDITION",
                         f'Serving signature key "{signature_name}" not found.')
    return self._loaded.signatures[signature_name]

  def check_model(self, model_name: str, version: Optional[int]) -> None:
    with self._lock:
      self.requests += 1
      if self._faults:
        raise self._faults.pop(0)
    if model_name != self.model_name:
      raise ServingFault("NOT_FOUND", f"Servable not found for request: Latest({model_name})")
    if version is not None and version != self.version:
      raise ServingFault("NOT_FOUND",
                         f"Servable not found for request: Specific({model_name}, {version})")

  def run(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Runs one signature on already-typed inputs; graph errors become faults."""
    function = self._signature(signature_name)
    specs = self.signature_inputs(signature_name)
    if set(inputs) != set(specs):
      raise ServingFault(
          "INVALID_ARGUMENT",
          f"input size does not match signature: {len(inputs)}!={len(specs)} "
          f"len({{{','.join(sorted(inputs))}}}) != len({{{','.join(sorted(specs))}}}). "
          f"Sent extra: {{{','.join(sorted(set(inputs) - set(specs)))}}}. "
          f"Missing but required: {{{','.join(sorted(set(specs) - set(inputs)))}}}.")
    for position, (name, spec) in enumerate(sorted(specs.items())):
      value = inputs[name]
      if tf.as_dtype(value.dtype) != spec.dtype:
        raise ServingFault("INVALID_ARGUMENT",
                           f"Expects arg[{position}] ({name}) to be {spec.dtype.name} but "
                           f"{tf.as_dtype(value.dtype).name} is provided")
    try:
      outputs = function(**{name: tf.constant(value) for name, value in inputs.items()})
    except tf.errors.InvalidArgumentError as error:
      raise ServingFault("INVALID_ARGUMENT", error.message) from None
    except tf.errors.OpError as error:
      raise ServingFault("INTERNAL", error.message) from None
    except (TypeError, ValueError) as error:  # e.g. a tensor of the wrong rank
      raise ServingFault("INVALID_ARGUMENT", str(error)) from None
    return {name: value.numpy() for name, value in outputs.items()}


# --- REST -----------------------------------------------------------------------------

_PREDICT_PATH = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?:predict$")
_STATUS_PATH = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?$")


def _json_to_array(value: Any, spec: tf.TensorSpec, name: str) -> np.ndarray:
  """Converts a JSON value to the signature's dtype like TF Serving's json_tensor."""
  if spec.dtype == tf.string:
    def decode(item: Any) -> Any:
      if isinstance(item, list):
        return [decode(i) for i in item]
      if isinstance(item, dict) and set(item) == {"b64"}:
        return base64.b64decode(item["b64"])
      if isinstance(item, str):
        return item.encode("utf-8")
      raise ServingFault("INVALID_ARGUMENT",
                         f"JSON Value: {json.dumps(item)} not formatted correctly for "
                         f"string input {name}")
    return np.array(decode(value), dtype=object)
  try:
    array = np.array(value, dtype=spec.dtype.as_numpy_dtype)
  except (TypeError, ValueError):
    raise ServingFault("INVALID_ARGUMENT",
                       f"JSON Value for input {name} is not of expected type: "
                       f"{spec.dtype.name}") from None
  if spec.dtype.is_integer and not np.array_equal(np.array(value, dtype=np.float64), array):
    raise ServingFault("INVALID_ARGUMENT",
                       f"JSON Value for input {name} is not of expected type: "
                       f"{spec.dtype.name}")
  return array


def _array_to_json(array: np.ndarray) -> Any:
  if array.dtype == object:
    return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array).tolist() \
        if array.size else array.tolist()
  return array.tolist()


class _RESTHandler(http.server.BaseHTTPRequestHandler):
  predictor: SavedModelPredictor  # set on the per-server subclass

  def log_message(self, *args: Any) -> None:  # keep pytest output clean
    pass

  def _answer(self, status: int, body: Mapping[str, Any]) -> None:
    payload = json.dumps(body).encode("utf-8")
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(payload)))
    self.end_headers()
    self.wfile.write(payload)

  def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
    match = _STATUS_PATH.match(self.path)
    if not match or match.group(1) != self.predictor.model_name:
      self._answer(404, {"error": f"Servable not found: {self.path}"})
      return
    self._answer(200, {"model_version_status": [{
        "version": str(self.predictor.version), "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]})

  def do_POST(self) -> None:  # noqa: N802
    try:
      self._answer(200, self._predict())
    except ServingFault as fault:
      self._answer(_HTTP_STATUS.get(fault.code, 500), {"error": fault.message})

  def _predict(self) -> Dict[str, Any]:
    match = _PREDICT_PATH.match(self.path)
    if not match:
      raise ServingFault("NOT_FOUND", f"Malformed request: POST {self.path}")
    length = int(self.headers.get("Content-Length", 0))
    raw = self.rfile.read(length)
    version = int(match.group(2)) if match.group(2) else None
    self.predictor.check_model(match.group(1), version)
    try:
      body = json.loads(raw)
    except ValueError as error:
      raise ServingFault("INVALID_ARGUMENT", f"JSON Parse error: {error}") from None
    signature_name = body.get("signature_name", "serving_default")
    specs = self.predictor.signature_inputs(signature_name)
    if ("inputs" in body) == ("instances" in body):
      raise ServingFault("INVALID_ARGUMENT",
                         "JSON Value must have exactly one of 'instances' or 'inputs' key")
    if "inputs" in body:
      columns = body["inputs"]
      if isinstance(columns, dict) and set(columns) != {"b64"}:
        pass  # named inputs
      elif len(specs) == 1:  # TF Serving accepts a bare value for a one-input signature
        columns = {next(iter(specs)): columns}
      else:
        raise ServingFault("INVALID_ARGUMENT", "'inputs' must be an object of named inputs")
    else:
      rows = body["instances"]
      if not isinstance(rows, list) or not rows:
        raise ServingFault("INVALID_ARGUMENT", "'instances' must be a non-empty list")
      if all(isinstance(row, dict) and "b64" not in row for row in rows):
        columns = {name: [row.get(name) for row in rows] for name in rows[0]}
      elif len(specs) == 1:
        columns = {next(iter(specs)): rows}
      else:
        raise ServingFault("INVALID_ARGUMENT",
                           "instances must be objects of named inputs for this signature")
    inputs = {}
    for name, value in columns.items():
      if name not in specs:
        inputs[name] = np.asarray(value)  # rejected by the input-name check in run()
      else:
        inputs[name] = _json_to_array(value, specs[name], name)
    outputs = self.predictor.run(signature_name, inputs)
    if "inputs" in body:
      if len(outputs) == 1:
        return {"outputs": _array_to_json(next(iter(outputs.values())))}
      return {"outputs": {name: _array_to_json(value) for name, value in outputs.items()}}
    batch = next(iter(outputs.values())).shape[0]
    if len(outputs) == 1:
      return {"predictions": _array_to_json(next(iter(outputs.values())))}
    return {"predictions": [{name: _array_to_json(value[i]) for name, value in outputs.items()}
                            for i in range(batch)]}


class RESTServingTestDouble:
  """Loopback HTTP TEST DOUBLE of TF Serving's REST predict API (tests only).

  Args:
    base_dir: model base path with integer version directories.
    model_name: the served model's name.

  Use as a context manager; ``url`` is ``http://127.0.0.1:PORT``.
  """

  def __init__(self, base_dir: str, model_name: str = "deepbof"):
    self.predictor = SavedModelPredictor(base_dir, model_name)
    handler = type("Handler", (_RESTHandler,), {"predictor": self.predictor})
    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    self._server.daemon_threads = True
    self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  def __enter__(self) -> "RESTServingTestDouble":
    self._thread.start()
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self._server.shutdown()
    self._server.server_close()
    self._thread.join(timeout=10)


# --- gRPC -----------------------------------------------------------------------------

class GRPCServingTestDouble:
  """Loopback gRPC TEST DOUBLE of TF Serving's ``PredictionService`` (tests only).

  Args:
    base_dir: model base path with integer version directories.
    model_name: the served model's name.

  Use as a context manager; ``target`` is ``127.0.0.1:PORT``.
  """

  def __init__(self, base_dir: str, model_name: str = "deepbof"):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    self.predictor = predictor = SavedModelPredictor(base_dir, model_name)

    class _Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):

      def Predict(self, request, context):  # noqa: N802 (gRPC's naming)
        try:
          version = request.model_spec.version.value \
              if request.model_spec.HasField("version") else None
          predictor.check_model(request.model_spec.name, version)
          signature_name = request.model_spec.signature_name or "serving_default"
          inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
          outputs = predictor.run(signature_name, inputs)
        except ServingFault as fault:
          context.abort(getattr(grpc.StatusCode, fault.code), fault.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = predictor.model_name
        response.model_spec.signature_name = signature_name
        response.model_spec.version.value = predictor.version
        for name, value in outputs.items():
          response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response

    self._server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        options=[("grpc.max_send_message_length", -1),
                 ("grpc.max_receive_message_length", -1)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _Servicer(), self._server)
    port = self._server.add_insecure_port("127.0.0.1:0")
    self.target = f"127.0.0.1:{port}"

  def __enter__(self) -> "GRPCServingTestDouble":
    self._server.start()
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self._server.stop(grace=None).wait(10)
