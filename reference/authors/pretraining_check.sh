#!/usr/bin/env bash
# Pretraining as the authors did it, measured: deepbof and the authors' own code
# (under Octave) on the same bag-of-features of a demo corpus.
#
#   AUTHORS_DIR=/path/to/juhannam/deepbof reference/authors/pretraining_check.sh OUT [CLIPS]
#
# 1. a CLIPS-clip demo corpus (default 2,000), preprocessed at demo scale, local
#    features learned and every clip encoded once (seed 0);
# 2. deepbof's song-level stage on those features for {pretrained, random} x seeds,
#    at the paper's 100 epochs (--preset=paper) and at the default budget (the paper's
#    11,500 updates), 3 hidden layers, then 1 and 2 hidden layers at both budgets;
#    each model
#    directory starts from a copy of the encoded one (same features for every run);
# 3. the authors' song-level stage (reference/authors/compare_pipeline.py) on the same
#    features at 100 epochs, seeds $AUTHOR_SEEDS (default 1,2; their run_tagatune_dnn.m
#    seeds with 1). Octave needs an optimized BLAS (Debian: libopenblas0): with the
#    reference BLAS one pretrained run takes an hour on 2 cores.
# Every finished run leaves its metrics.json; a rerun skips it. collect.py tabulates.
set -euo pipefail
OUT=$(realpath -m "${1:?usage: pretraining_check.sh OUT [CLIPS]}")
CLIPS=${2:-2000}
SEEDS=${SEEDS:-0 1 2}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$ROOT/.venv/bin
mkdir -p "$OUT"
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

if [ ! -f "$OUT/corpus/annotations_final.csv" ]; then
  log "corpus: $CLIPS clips"
  "$BIN/deepbof-make-demo-corpus" --output_dir="$OUT/corpus" --num_clips="$CLIPS" \
      --seed=0 --num_workers=2 >"$OUT/corpus.log" 2>&1
fi
if [ ! -f "$OUT/data/metadata.json" ]; then
  log "preprocess"
  "$BIN/deepbof-preprocess" --manifest="$OUT/corpus/annotations_final.csv" \
      --manifest_format=mtt --audio_root="$OUT/corpus/audio" --output_dir="$OUT/data" \
      --sampling=onset --block_frames=8 --num_blocks=20000 --seed=0 --overwrite \
      --runner=DirectRunner --direct_num_workers=2 \
      --direct_running_mode=multi_processing >"$OUT/preprocess.log" 2>&1
fi
if [ ! -f "$OUT/base/bof/test.npz" ]; then
  log "learn local features + encode"
  "$BIN/deepbof-train" --data_dir="$OUT/data" --model_dir="$OUT/base" \
      --stages=learn-local-features,encode --preset=demo --seed=0 >"$OUT/base.log" 2>&1
fi

ours() {  # budget init layers seed
  local budget=$1 init=$2 layers=$3 seed=$4
  local dir="$OUT/runs/ours-$budget-$init-${layers}l-seed$seed"
  [ -f "$dir/metrics.json" ] && return 0
  log "deepbof: $budget budget, $init, $layers layers, seed $seed"
  rm -rf "$dir" && mkdir -p "$dir" && cp -r "$OUT/base/." "$dir/"
  local preset=demo; [ "$budget" = paper ] && preset=paper
  "$BIN/deepbof-train" --data_dir="$OUT/data" --model_dir="$dir" --preset=$preset \
      --stages=pretrain,finetune,evaluate --init="$init" --num_hidden_layers="$layers" \
      --set=pretrain.seed="$seed" --set=finetune.seed="$seed" --overwrite \
      >"$dir.log" 2>&1
}

for seed in $SEEDS; do
  for init in pretrained random; do ours paper $init 3 "$seed"; done
done
log "authors' code, 100 epochs, seeds ${AUTHOR_SEEDS:-1,2}"
(cd "$ROOT/reference/authors" && "$BIN/python" compare_pipeline.py \
    --authors_dir="${AUTHORS_DIR:?set AUTHORS_DIR to a checkout of juhannam/deepbof}" \
    --model_dir="$OUT/base" --output="$OUT/authors.json" --seeds="${AUTHOR_SEEDS:-1,2}" \
    >"$OUT/authors.log" 2>&1)
for seed in $SEEDS; do
  for init in pretrained random; do ours default $init 3 "$seed"; done
done
# The paper's layers x initialisation grid (Fig. 9) at both budgets, seeds $SEEDS.
for seed in $SEEDS; do
  for layers in 1 2; do
    for budget in paper default; do
      for init in pretrained random; do ours $budget $init $layers "$seed"; done
    done
  done
done
log "done"
