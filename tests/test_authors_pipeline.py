"""deepbof's whole song-level stage against the authors' own code, on the same features.

``tests/data/authors_pipeline.npz`` holds a small bag-of-features set (the first 600
training and 100 validation clips and all 351 test clips of a 2,000-clip demo corpus,
its first 256 dimensions in float16, the tags with positives in every split) and the
test AUC-T that the authors' MATLAB code (github.com/juhannam/deepbof: ``init_rbm.m``,
``train_rbm.m``, ``default_mlp.m``, ``tagatune_mlp.m``; 3 hidden layers of 512, RBM
pretraining, 100 fine-tuning epochs) reached on it under GNU Octave, for pretrained and
random initialisation and five seeds (``reference/authors/make_pipeline_fixture.py``).

Here ``deepbof-train --preset=paper --stages=pretrain,finetune,evaluate`` runs on the
same files. The two implementations draw different random numbers, so the test AUC-T
agrees only up to the spread between seeds; the update-for-update agreement is
``test_authors_reference.py``'s. The tolerance is stated in ``TOLERANCE`` with the
measured spreads it comes from (docs/model.md#reference-test).
"""

import json
import os

import numpy as np
import pytest

from deepbof_tf import model_dir as layout
from deepbof_tf.data import bof_io
from trainer import train

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "authors_pipeline.npz")
SPLITS = ("train", "valid", "test")
# |deepbof's test AUC-T (seed 0) − the mean of the authors' five seeds|. Measured on
# this set (x86-64, AVX2): the authors' code 0.8813 ± 0.0021 pretrained and
# 0.8604 ± 0.0029 random (seeds 1-5); deepbof 0.8805 ± 0.0029 and 0.8590 ± 0.0022
# (seeds 0-4). One run differs from a five-seed mean by about 0.003 (one standard
# deviation), so 0.01 is about 3.5 of them; losing pretraining's effect (+0.021 in
# both implementations) fails the test.
TOLERANCE = 0.01


@pytest.fixture(scope="module")
def ref():
  with np.load(FIXTURE) as data:
    return {k: data[k] for k in data.files}


def run_deepbof(ref, init: str, seed: int, root: str) -> float:
  """Test AUC-T of deepbof's song-level stage (--preset=paper) on the fixture's set."""
  data_dir, model_dir = os.path.join(root, "data"), os.path.join(root, "model")
  os.makedirs(data_dir)
  num_tags = ref["y_train"].shape[1]
  with open(os.path.join(data_dir, "metadata.json"), "w") as f:
    json.dump({"tags": [f"tag{int(t)}" for t in ref["kept_tags"]]}, f)
  for split in SPLITS:
    x = ref[f"x_{split}"].astype(np.float32)  # exactly the values Octave read
    ids = [f"{split}{i}" for i in range(len(x))]
    bof_io.write_bof(layout.bof_path(model_dir, split), ids, x, ref[f"y_{split}"])
  config = train.build_config(
      preset="paper", seed=seed,
      convenience={"dnn.init": init, "dnn.num_hidden_layers": int(ref["num_layers"]),
                   "finetune.epochs": int(ref["epochs"])})
  assert num_tags == len(ref["kept_tags"])
  train.run_stages(data_dir, model_dir, config, ["pretrain", "finetune", "evaluate"])
  with open(os.path.join(model_dir, "metrics.json")) as f:
    return float(json.load(f)["auc_tag"])


@pytest.mark.slow
def test_song_level_stage_reaches_the_authors_test_auc(ref, tmp_path):
  ours = {}
  for init in ("pretrained", "random"):
    authors = ref["authors_test_auc_tag"][list(ref["inits"]).index(init)]
    ours[init] = run_deepbof(ref, init, seed=0, root=str(tmp_path / init))
    assert abs(ours[init] - authors.mean()) <= TOLERANCE, (
        f"{init}: deepbof {ours[init]:.4f}, the authors' code {authors.mean():.4f} ± "
        f"{authors.std(ddof=1):.4f} over seeds {list(ref['seeds'])}")
  # The paper's finding, which the authors' code gives on this set with every seed:
  # pretraining helps.
  inits = list(ref["inits"])
  authors = ref["authors_test_auc_tag"]
  assert (authors[inits.index("pretrained")] > authors[inits.index("random")]).all()
  assert ours["pretrained"] > ours["random"]
