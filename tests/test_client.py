"""TFServingClient against the loopback TF Serving test doubles (REST and gRPC), and the
TF Serving configuration files of serving/."""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
import pytest
import tensorflow as tf

import serving_fixtures as fx
from serving.client import TFServingClient, TFServingError, clean_message, pad_waveforms
from tfserving_test_double import GRPCServingTestDouble, RESTServingTestDouble

SERVING_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "serving")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  return fx.shared_export(tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(exported):
  return tf.saved_model.load(exported["version_dir"])


@pytest.fixture(scope="module")
def rest_server(exported):
  with RESTServingTestDouble(exported["export_dir"], model_name="deepbof") as server:
    yield server


@pytest.fixture(scope="module")
def grpc_server(exported):
  with GRPCServingTestDouble(exported["export_dir"], model_name="deepbof") as server:
    yield server


class Sleeps(list):
  """Records the client's backoff waits instead of sleeping."""

  def __call__(self, seconds: float) -> None:
    self.append(seconds)


@pytest.fixture(params=["rest-inputs", "rest-instances", "grpc"])
def client_and_server(request, rest_server, grpc_server):
  sleeps = Sleeps()
  if request.param == "grpc":
    client = TFServingClient(grpc_target=grpc_server.target, model_name="deepbof",
                             timeout=60, max_retries=3, backoff=0.5, sleep=sleeps)
    server = grpc_server
  else:
    client = TFServingClient(url=rest_server.url, model_name="deepbof", timeout=60,
                             max_retries=3, backoff=0.5, sleep=sleeps,
                             request_format=request.param.split("-")[1])
    server = rest_server
  yield client, server.predictor, sleeps
  server.predictor.clear_faults()
  client.close()


@pytest.fixture(scope="module")
def clips():
  return np.stack([fx.music_like_signal(1.5, seed) for seed in (20, 21)])


def test_predict_equals_the_saved_model(client_and_server, loaded, clips):
  client, _, _ = client_and_server
  out = client.predict(clips)
  ref = loaded.signatures["serving_default"](waveform=tf.constant(clips))
  assert set(out) == {"probabilities", "embedding"}
  np.testing.assert_allclose(out["probabilities"], ref["probabilities"].numpy(), rtol=1e-6)
  np.testing.assert_allclose(out["embedding"], ref["embedding"].numpy(), rtol=1e-6)
  assert out["probabilities"].dtype == np.float32


def test_ragged_waveforms_use_the_padded_signature(client_and_server, loaded, clips):
  client, predictor, _ = client_and_server
  short = clips[1, :20000]
  before = predictor.requests
  out = client.predict([clips[0], short])
  assert predictor.requests == before + 1  # one request for the whole batch
  for i, clip in enumerate([clips[0], short]):
    ref = loaded.signatures["serving_default"](waveform=tf.constant(clip[None]))
    np.testing.assert_allclose(out["embedding"][i], ref["embedding"].numpy()[0],
                               rtol=1e-5, atol=1e-7)
  explicit = client.predict(clips, num_samples=[clips.shape[1], 20000])
  np.testing.assert_allclose(explicit["embedding"], out["embedding"], rtol=1e-6)


def test_predict_wav_and_tags(client_and_server, loaded):
  client, _, _ = client_and_server
  clip = fx.pcm16(fx.music_like_signal(1.2, 30))
  out = client.predict_wav([fx.wav_bytes(clip)])
  ref = loaded.signatures["serving_default"](waveform=tf.constant(clip[None]))
  np.testing.assert_allclose(out["probabilities"], ref["probabilities"].numpy(), rtol=1e-5)
  assert client.tags() == list(fx.TAGS)


def test_bad_request_is_not_retried_and_carries_the_server_message(client_and_server, clips):
  client, predictor, sleeps = client_and_server
  bad = clips.copy()
  bad[0, 5] = np.nan
  before = predictor.requests
  with pytest.raises(TFServingError, match="waveform contains NaN or Inf samples") as error:
    client.predict(bad)
  assert error.value.code == "INVALID_ARGUMENT"
  assert error.value.attempts == 1 and predictor.requests == before + 1 and not sleeps
  assert "Graph execution error" not in str(error.value)
  with pytest.raises(TFServingError, match="waveform too short") as error:
    client.predict(np.zeros([1, 100], np.float32))
  assert error.value.code == "INVALID_ARGUMENT"
  with pytest.raises(TFServingError, match="WAV sample rate must be 22050 Hz"):
    client.predict_wav([fx.wav_bytes(clips[0], sample_rate=16000)])
  with pytest.raises(TFServingError, match="not found") as error:
    client.call("no_such_signature", {"waveform": clips})
  assert not sleeps


def test_retries_unavailable_with_exponential_backoff(client_and_server, clips):
  client, predictor, sleeps = client_and_server
  predictor.fail_next(2)
  before = predictor.requests
  out = client.predict(clips)
  assert out["probabilities"].shape == (2, len(fx.TAGS))
  assert predictor.requests == before + 3
  assert sleeps == [0.5, 1.0]


def test_gives_up_after_max_retries(client_and_server, clips):
  client, predictor, sleeps = client_and_server
  predictor.fail_next(10)
  with pytest.raises(TFServingError, match="gave up after 4 attempts") as error:
    client.predict(clips)
  assert error.value.code == "UNAVAILABLE" and error.value.attempts == 4
  assert sleeps == [0.5, 1.0, 2.0]
  assert "server overloaded" in str(error.value)


def test_wrong_model_and_version_are_not_found(rest_server, grpc_server, clips):
  for kwargs in (dict(url=rest_server.url), dict(grpc_target=grpc_server.target)):
    sleeps = Sleeps()
    with TFServingClient(model_name="other", sleep=sleeps, **kwargs) as client:
      with pytest.raises(TFServingError, match="Servable not found") as error:
        client.predict(clips)
      assert error.value.code == "NOT_FOUND" and not sleeps
    with TFServingClient(model_name="deepbof", version=1, **kwargs) as client:
      assert client.predict(clips)["embedding"].shape == (2, fx.NUM_HIDDEN)
    with TFServingClient(model_name="deepbof", version=9, sleep=sleeps, **kwargs) as client:
      with pytest.raises(TFServingError, match="Servable not found"):
        client.predict(clips)


def test_wrong_dtype_over_grpc_is_invalid_argument(grpc_server):
  client = TFServingClient(grpc_target=grpc_server.target, model_name="deepbof")
  with pytest.raises(TFServingError, match="to be float32 but int32") as error:
    client.call("serving_default", {"waveform": np.zeros([1, 5000], np.int32)})
  assert error.value.code == "INVALID_ARGUMENT"
  client.close()


def test_connection_refused_is_retried_then_unavailable():
  with socket.socket() as probe:  # a port nobody listens on
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  sleeps = Sleeps()
  client = TFServingClient(url=f"http://127.0.0.1:{port}", max_retries=2, backoff=0.25,
                           sleep=sleeps)
  with pytest.raises(TFServingError, match="cannot connect") as error:
    client.predict(np.zeros([1, 4000], np.float32))
  assert error.value.code == "UNAVAILABLE" and error.value.attempts == 3
  assert sleeps == [0.25, 0.5]


def test_timeout_is_deadline_exceeded_and_not_retried():
  listener = socket.socket()
  listener.bind(("127.0.0.1", 0))
  listener.listen(4)
  accepted = []
  thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
  thread.start()
  sleeps = Sleeps()
  client = TFServingClient(url=f"http://127.0.0.1:{listener.getsockname()[1]}",
                           timeout=0.3, sleep=sleeps)
  try:
    with pytest.raises(TFServingError, match="no answer within 0.3 s") as error:
      client.predict(np.zeros([1, 4000], np.float32))
    assert error.value.code == "DEADLINE_EXCEEDED" and error.value.attempts == 1
    assert not sleeps
  finally:
    for connection, _ in accepted:
      connection.close()
    listener.close()


def test_client_argument_checks_and_helpers():
  with pytest.raises(ValueError, match="exactly one"):
    TFServingClient()
  with pytest.raises(ValueError, match="exactly one"):
    TFServingClient(url="http://x", grpc_target="y:1")
  with pytest.raises(ValueError, match="request_format"):
    TFServingClient(url="http://x", request_format="rows")
  batch, lengths = pad_waveforms([np.ones(3), np.ones(5)])
  assert batch.shape == (2, 5) and lengths.tolist() == [3, 5]
  np.testing.assert_array_equal(batch[0], [1, 1, 1, 0, 0])
  with pytest.raises(ValueError, match="mono"):
    pad_waveforms([np.ones([3, 2])])
  noisy = ("Graph execution error:\n\nDetected at node VerifyFinite/CheckNumerics defined "
           "at (most recent call last):\n<stack traces unavailable>\nwaveform contains NaN"
           " : Tensor had NaN values\n\t [[{{node VerifyFinite/CheckNumerics}}]] "
           "[Op:__inference_signature_wrapper_1]")
  assert clean_message(noisy) == "waveform contains NaN : Tensor had NaN values"


# --- TF Serving configuration files ----------------------------------------------------


def test_models_config_parses_as_model_server_config():
  from google.protobuf import text_format
  from tensorflow_serving.config import model_server_config_pb2
  with open(os.path.join(SERVING_DIR, "models.config"), encoding="utf-8") as f:
    config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
  (model,) = config.model_config_list.config
  assert model.name == "deepbof" and model.base_path == "/models/deepbof"
  assert model.model_platform == "tensorflow"
  assert model.model_version_policy.latest.num_versions == 1


def _batching_parameters_class():
  """TF Serving's BatchingParameters message (session_bundle_config.proto), built here
  because tensorflow-serving-api does not ship that proto."""
  from google.protobuf import descriptor_pb2, descriptor_pool, wrappers_pb2
  from google.protobuf import message_factory
  pool = descriptor_pool.DescriptorPool()
  wrappers = descriptor_pb2.FileDescriptorProto()
  wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
  pool.Add(wrappers)
  proto = descriptor_pb2.FileDescriptorProto(
      name="session_bundle_config_subset.proto", package="tensorflow.serving",
      syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
  message = proto.message_type.add(name="BatchingParameters")
  fields = descriptor_pb2.FieldDescriptorProto
  for number, (name, type_name) in enumerate([
      ("max_batch_size", ".google.protobuf.Int64Value"),
      ("batch_timeout_micros", ".google.protobuf.Int64Value"),
      ("max_enqueued_batches", ".google.protobuf.Int64Value"),
      ("num_batch_threads", ".google.protobuf.Int64Value"),
      ("thread_pool_name", ".google.protobuf.StringValue")], start=1):
    message.field.add(name=name, number=number, type=fields.TYPE_MESSAGE,
                      type_name=type_name, label=fields.LABEL_OPTIONAL)
  message.field.add(name="allowed_batch_sizes", number=6, type=fields.TYPE_INT64,
                    label=fields.LABEL_REPEATED)
  message.field.add(name="pad_variable_length_inputs", number=7, type=fields.TYPE_BOOL,
                    label=fields.LABEL_OPTIONAL)
  pool.Add(proto)
  descriptor = pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
  return message_factory.GetMessageClass(descriptor)


def test_batching_parameters_parse_as_tf_serving_batching_parameters():
  from google.protobuf import text_format
  with open(os.path.join(SERVING_DIR, "batching_parameters.txt"), encoding="utf-8") as f:
    params = text_format.Parse(f.read(), _batching_parameters_class()())
  assert params.max_batch_size.value == 16
  assert 0 < params.batch_timeout_micros.value <= 100_000
  assert params.num_batch_threads.value >= 1
  assert params.pad_variable_length_inputs is False
