"""One command for the day a GPU is lent: every stage on the GPU, compared with the CPU.

``benchmarks/gpu_check.sh OUT`` (this script) renders a small demo corpus and
preprocesses it once on the CPU, then runs the same training in up to three *legs*,
each a fresh set of processes:

* ``cpu``: ``CUDA_VISIBLE_DEVICES=""``, the reference;
* ``gpu``: float32 on the visible GPUs (one device, ``--strategy=mirrored`` when more
  than one is visible);
* ``gpu_mixed``: the same with ``finetune.mixed_precision`` (float16 compute).

Every leg trains every stage (learn-local-features with the TensorFlow RBM backend, so
it runs on the device; encode; pretrain; finetune), evaluates on the test split,
exports a SavedModel and tags one test clip with ``deepbof-tag``. The report
(``OUT/gpu_check.json`` and ``OUT/gpu_check.md``) gives each leg's stage times, test
AUC-T, and the largest difference of its bag-of-features, test scores and tag
probabilities from the CPU leg's. Without a GPU the GPU legs are reported as skipped
(what runs here, and in the test suite, is the CPU leg and the comparison).
No network: the corpus is rendered from the scores ``music21`` ships.

Usage:
  benchmarks/gpu_check.sh OUT [--legs=cpu,gpu,gpu_mixed] [--num_clips=160]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
LEGS = ("cpu", "gpu", "gpu_mixed")
STAGES = ("learn-local-features", "encode", "pretrain", "finetune")


def _tool(name: str) -> str:
  path = os.path.join(BIN, name)
  return path if os.path.exists(path) else name


def _run(argv: Sequence[str], log: str, env: Optional[Dict[str, str]] = None,
         stdout: Optional[str] = None) -> float:
  """Runs one command, its output into ``log`` (its stdout into ``stdout`` if given);
  returns its wall time (raises on failure)."""
  start = time.monotonic()
  with open(log, "w") as out, open(stdout or os.devnull, "w") as result:
    code = subprocess.run(list(argv), stdout=result if stdout else out,
                          stderr=subprocess.STDOUT if not stdout else out,
                          env=env).returncode
  if code:
    tail = open(log).read()[-3000:]
    raise RuntimeError(f"{' '.join(argv[:2])} … failed ({code}); {log}:\n{tail}")
  return time.monotonic() - start


def visible_gpus() -> int:
  probe = ("import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='3'; import tensorflow as tf; "
           "print(len(tf.config.list_physical_devices('GPU')))")
  out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
  return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0


def prepare(out: str, num_clips: int, clip_seconds: float) -> Dict[str, float]:
  corpus, data = os.path.join(out, "corpus"), os.path.join(out, "data")
  times = {}
  if not os.path.exists(os.path.join(corpus, "annotations_final.csv")):
    times["corpus"] = _run([_tool("deepbof-make-demo-corpus"), f"--output_dir={corpus}",
                            f"--num_clips={num_clips}", f"--clip_seconds={clip_seconds:g}",
                            "--seed=0", "--num_workers=2"], os.path.join(out, "corpus.log"))
  if not os.path.exists(os.path.join(data, "metadata.json")):
    times["preprocess"] = _run(
        [_tool("deepbof-preprocess"), f"--manifest={corpus}/annotations_final.csv",
         "--manifest_format=mtt", f"--audio_root={corpus}/audio", f"--output_dir={data}",
         "--num_blocks=4000", "--seed=0", "--overwrite", "--runner=DirectRunner",
         "--direct_num_workers=1"], os.path.join(out, "preprocess.log"),
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
  return times


def run_leg(out: str, leg: str, gpus: int, finetune_epochs: int,
            pretrain_epochs: int, local_epochs: int,
            pretrain_batch_size: int = 100) -> Dict[str, object]:
  data = os.path.join(out, "data")
  model, export = os.path.join(out, leg, "model"), os.path.join(out, leg, "export")
  os.makedirs(os.path.join(out, leg), exist_ok=True)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  if leg == "cpu":
    env["CUDA_VISIBLE_DEVICES"] = ""
  common = [f"--data_dir={data}", f"--model_dir={model}", "--preset=demo", "--seed=0",
            "--rbm_backend=tensorflow", f"--finetune_epochs={finetune_epochs}",
            f"--pretrain_epochs={pretrain_epochs}", f"--set=local.rbm.epochs={local_epochs}",
            f"--set=pretrain.batch_size={pretrain_batch_size}",
            "--strategy=" + ("mirrored" if leg != "cpu" and gpus > 1 else "default"),
            "--overwrite"]
  if leg == "gpu_mixed":
    common.append("--set=finetune.mixed_precision=true")
  times = {}
  for stage in STAGES:
    times[stage] = _run([_tool("deepbof-train"), *common, f"--stages={stage}"],
                        os.path.join(out, leg, f"{stage}.log"), env)
  times["evaluate"] = _run([_tool("deepbof-evaluate"), f"--data_dir={data}",
                            f"--model_dir={model}", "--split=test", "--nobaseline"],
                           os.path.join(out, leg, "evaluate.log"), env)
  times["export"] = _run([_tool("deepbof-export"), f"--model_dir={model}",
                          f"--export_dir={export}", "--version=1"],
                         os.path.join(out, leg, "export.log"), env)
  clip = first_test_clip(out)
  tag_json = os.path.join(out, leg, "tag.json")
  times["tag"] = _run([_tool("deepbof-tag"), f"--model={export}", "--output=json",
                       "--top_k=1000", "--noprogress", clip],
                      os.path.join(out, leg, "tag.log"), env, stdout=tag_json)
  return {"leg": leg, "seconds": times, "model_dir": model, "tag_output": tag_json,
          "auc_tag": json.load(open(os.path.join(model, "metrics.json")))["auc_tag"]}


def first_test_clip(out: str) -> str:
  import csv
  corpus = os.path.join(out, "corpus")
  with open(os.path.join(corpus, "manifest.csv")) as f:
    rows = [r for r in csv.DictReader(f) if r.get("split") == "test"]
  return os.path.join(corpus, "audio", rows[0]["path"]) if rows else ""


def _tag_probabilities(path: str) -> Dict[str, float]:
  records = json.load(open(path))  # deepbof-tag --output=json: one record per file
  return {t["tag"]: float(t["probability"]) for t in records[0]["tags"]}


def compare(reference: Dict[str, object], other: Dict[str, object]) -> Dict[str, float]:
  """The largest differences of ``other``'s outputs from ``reference``'s."""
  import numpy as np
  from deepbof_tf.training import song_inputs as layout
  diffs = {}
  x_ref = layout.load_bof(str(reference["model_dir"]), "test")[1]
  x_other = layout.load_bof(str(other["model_dir"]), "test")[1]
  diffs["bag_of_features_max_abs"] = float(np.max(np.abs(x_ref - x_other)))
  p_ref, p_other = (_tag_probabilities(str(r["tag_output"])) for r in (reference, other))
  shared = sorted(set(p_ref) & set(p_other))
  diffs["tag_probability_max_abs"] = (max(abs(p_ref[t] - p_other[t]) for t in shared)
                                      if shared else float("nan"))
  diffs["auc_tag_difference"] = float(other["auc_tag"]) - float(reference["auc_tag"])
  return diffs


def report(out: str, results: List[Dict[str, object]], skipped: Dict[str, str],
           prepared: Dict[str, float], gpus: int) -> str:
  lines = [f"GPU check on {platform.node()} ({gpus} GPU(s) visible), "
           f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
           "| leg | " + " | ".join(STAGES) + " | evaluate | export | tag | test AUC-T | "
           "max |Δ| BoF vs cpu | max |Δ| tag prob. vs cpu |",
           "|---" * (len(STAGES) + 8) + "|"]
  for r in results:
    s = r["seconds"]
    d = r.get("vs_cpu", {})
    lines.append(f"| {r['leg']} | " + " | ".join(f"{s[k]:.1f} s" for k in STAGES) +
                 f" | {s['evaluate']:.1f} s | {s['export']:.1f} s | {s['tag']:.1f} s | "
                 f"{r['auc_tag']:.4f} | {d.get('bag_of_features_max_abs', 0):.2g} | "
                 f"{d.get('tag_probability_max_abs', 0):.2g} |")
  for leg, why in skipped.items():
    lines.append(f"| {leg} | skipped: {why} |" + " |" * (len(STAGES) + 6))
  lines += ["", "Prepared once on the CPU: " +
            (", ".join(f"{k} {v:.0f} s" for k, v in prepared.items()) or "reused")]
  text = "\n".join(lines) + "\n"
  with open(os.path.join(out, "gpu_check.md"), "w") as f:
    f.write(text)
  with open(os.path.join(out, "gpu_check.json"), "w") as f:
    json.dump({"gpus": gpus, "legs": results, "skipped": skipped, "prepared": prepared},
              f, indent=1, default=str)
  return text


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("output_dir")
  parser.add_argument("--legs", default=",".join(LEGS))
  parser.add_argument("--num_clips", type=int, default=160)
  parser.add_argument("--clip_seconds", type=float, default=10.0)
  parser.add_argument("--finetune_epochs", type=int, default=60)
  parser.add_argument("--pretrain_epochs", type=int, default=50)
  parser.add_argument("--local_epochs", type=int, default=20)
  parser.add_argument("--pretrain_batch_size", type=int, default=100)
  args = parser.parse_args(argv)
  out = os.path.abspath(args.output_dir)
  os.makedirs(out, exist_ok=True)
  legs = [leg for leg in args.legs.split(",") if leg]
  unknown = sorted(set(legs) - set(LEGS))
  if unknown:
    parser.error(f"unknown legs {unknown}; known: {LEGS}")
  gpus = visible_gpus()
  prepared = prepare(out, args.num_clips, args.clip_seconds)
  results, skipped = [], {}
  for leg in legs:
    if leg != "cpu" and gpus == 0:
      skipped[leg] = "no GPU visible"
      continue
    results.append(run_leg(out, leg, gpus, args.finetune_epochs, args.pretrain_epochs,
                           args.local_epochs, args.pretrain_batch_size))
    print(f"{leg}: " + ", ".join(f"{k} {v:.1f} s" for k, v in
                                 results[-1]["seconds"].items()), flush=True)
  reference = next((r for r in results if r["leg"] == "cpu"), None)
  for r in results:
    if reference is not None:
      r["vs_cpu"] = compare(reference, r)
  print(report(out, results, skipped, prepared, gpus))
  return 0


if __name__ == "__main__":
  sys.exit(main())
