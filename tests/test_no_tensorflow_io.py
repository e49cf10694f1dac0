"""The core chain needs neither tensorflow-io nor the demo extra's packages.

Preprocess, train, export and tag each run as their own process with an import hook
(a ``sitecustomize`` on PYTHONPATH) that refuses ``tensorflow_io`` and the demo
corpus's ``music21``, ``pretty_midi`` and ``symusic``, and records every attempt in a
file, so a guarded ``try: import tensorflow_io`` would be caught too. The chain is the real one, on
a dozen short MP3/FLAC/Ogg/WAV clips with tiny training settings.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from deepbof_tf import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HOOK = '''
import os, sys

_BLOCKED = ("tensorflow_io", "music21", "pretty_midi", "symusic")

class _RefuseTensorflowIo:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in _BLOCKED:
      with open(os.environ["DEEPBOF_TFIO_LOG"], "a") as f:
        f.write(name + "\\n")
      raise ImportError(name + " is blocked in this test")
    return None

sys.meta_path.insert(0, _RefuseTensorflowIo())
'''


def _clip(path, seconds, rate, seed):
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * rate)) / rate
  tone = 0.3 * np.sin(2 * np.pi * (200 + 40 * seed) * t) * (1 + np.sin(2 * np.pi * 2 * t))
  sf.write(str(path), (tone + 0.02 * rng.standard_normal(t.size)).astype(np.float32), rate)


@pytest.mark.slow
def test_core_chain_imports_neither_tensorflow_io_nor_the_demo_extra(tmp_path):
  hook_dir = tmp_path / "hook"
  hook_dir.mkdir()
  (hook_dir / "sitecustomize.py").write_text(_HOOK)
  log = tmp_path / "tfio_imports.log"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hook_dir), REPO]),
             DEEPBOF_TFIO_LOG=str(log), CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
  # The hook itself works: a guarded import is recorded.
  subprocess.run([sys.executable, "-c", "try:\n  import tensorflow_io\nexcept ImportError:\n"
                  "  pass"], env=env, check=True, timeout=60)
  assert log.read_text() == "tensorflow_io\n"
  log.unlink()
  audio = tmp_path / "audio"
  audio.mkdir()
  rows = ["path,split,tags"]
  extensions = ("mp3", "flac", "ogg", "wav")
  for i in range(12):
    name = f"c{i}.{extensions[i % 4]}"
    _clip(audio / name, 4.0, (22050, 44100, 16000)[i % 3], i)
    rows.append(f"{name},{('train', 'train', 'valid', 'test')[i % 4]},"
                f"{'rock' if i % 2 else 'piano'}{';slow' if i % 3 == 0 else ''}")
  manifest = tmp_path / "manifest.csv"
  manifest.write_text("\n".join(rows) + "\n")
  data, model, export = tmp_path / "data", tmp_path / "model", tmp_path / "export"

  def run(*command):
    result = subprocess.run([sys.executable, "-m", *command], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (command, result.stderr[-3000:])
    return result

  run("beam_jobs.preprocess", f"--manifest={manifest}", f"--audio_root={audio}",
      f"--output_dir={data}", "--num_blocks=200", "--runner=DirectRunner",
      "--direct_num_workers=1")
  run("trainer.train", f"--data_dir={data}", f"--model_dir={model}", "--rbm_epochs=2",
      "--pretrain_epochs=1", "--finetune_epochs=2", "--set=local.rbm.num_hidden=32",
      "--set=dnn.hidden_units=8", "--num_hidden_layers=2", "--set=pretrain.batch_size=3",
      "--set=local.rbm.batch_size=20", "--set=finetune.batch_size=4",
      "--set=finetune.tensorboard=false")
  run("serving.export", f"--model_dir={model}", f"--export_dir={export}")
  tagged = run("serving.tag", f"--model={export}", "--output=json", str(audio / "c1.flac"),
               str(audio / "c0.mp3"), str(audio / "c2.ogg"))
  assert len(json.loads(tagged.stdout)) == 3
  for tool in ("deepbof-train", "deepbof-tag", "deepbof-evaluate", "deepbof-export",
               "deepbof-preprocess"):
    shown = subprocess.run([cli.console_script(tool), "--help"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0 and "--" in shown.stdout, (tool, shown.stderr[-2000:])
    assert "Traceback" not in shown.stderr, (tool, shown.stderr[-2000:])
  assert not log.exists(), f"blocked modules were imported: {log.read_text()}"
