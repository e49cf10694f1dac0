"""benchmarks/gpu_check.py runs end to end on a CPU-only machine (the GPU legs skipped)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_runs_the_cpu_leg_and_reports_the_gpu_legs_skipped(tmp_path):
  out = tmp_path / "check"
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "benchmarks", "gpu_check.py"), str(out),
       "--num_clips=40", "--clip_seconds=6", "--finetune_epochs=3", "--pretrain_epochs=2",
       "--local_epochs=2", "--pretrain_batch_size=10"], capture_output=True, text=True, env=env, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  report = json.loads((out / "gpu_check.json").read_text())
  assert report["gpus"] == 0
  assert report["skipped"] == {"gpu": "no GPU visible", "gpu_mixed": "no GPU visible"}
  [cpu] = report["legs"]
  assert set(cpu["seconds"]) == {"learn-local-features", "encode", "pretrain", "finetune",
                                 "evaluate", "export", "tag"}
  assert all(seconds > 0 for seconds in cpu["seconds"].values())
  assert 0.0 <= cpu["auc_tag"] <= 1.0
  # The comparison with itself is exact, and the tagged clip has every tag.
  assert cpu["vs_cpu"] == {"bag_of_features_max_abs": 0.0, "tag_probability_max_abs": 0.0,
                           "auc_tag_difference": 0.0}
  tags = json.loads((out / "cpu" / "tag.json").read_text())[0]["tags"]
  assert len(tags) == len(json.loads((out / "cpu" / "model" / "tags.json").read_text())["tags"])
  markdown = (out / "gpu_check.md").read_text()
  assert "| cpu |" in markdown and "skipped: no GPU visible" in markdown
