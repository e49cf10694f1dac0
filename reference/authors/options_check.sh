#!/usr/bin/env bash
# The measured effect of each of our song-level options against the authors'
# conventions, on pretraining_check.sh's encoded features (run that first):
#   reference/authors/options_check.sh OUT
# Each variant: 3 hidden layers, pretrained, the paper's 100 epochs, seeds $SEEDS
# (default 0); the reference is pretraining_check.sh's ours-paper-pretrained runs.
set -euo pipefail
OUT=$(realpath -m "${1:?usage: options_check.sh OUT}")
SEEDS=${SEEDS:-0}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$ROOT/.venv/bin
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
[ -f "$OUT/base/bof/test.npz" ] || { echo "run pretraining_check.sh $OUT first" >&2; exit 1; }

variant() {  # name init seed settings...
  local name=$1 init=$2 seed=$3; shift 3
  local dir="$OUT/runs/ours-paper-$init-3l-seed$seed-$name"
  [ -f "$dir/metrics.json" ] && return 0
  log "deepbof: $name, $init, seed $seed"
  rm -rf "$dir" && mkdir -p "$dir" && cp -r "$OUT/base/." "$dir/"
  local sets=()
  for s in "$@"; do sets+=("--set=$s"); done
  "$BIN/deepbof-train" --data_dir="$OUT/data" --model_dir="$dir" --preset=paper \
      --stages=pretrain,finetune,evaluate --init="$init" --num_hidden_layers=3 \
      --set=pretrain.seed="$seed" --set=finetune.seed="$seed" "${sets[@]}" --overwrite \
      >"$dir.log" 2>&1
}

for seed in $SEEDS; do
  variant hidden_bias pretrained "$seed" dnn.pretrained_biases=hidden
  variant inverted_dropout pretrained "$seed" dnn.dropout_scaling=inverted
  variant inverted_dropout random "$seed" dnn.dropout_scaling=inverted
  variant shuffled pretrained "$seed" pretrain.shuffle=true finetune.shuffle=true
  variant all_three pretrained "$seed" dnn.pretrained_biases=hidden \
      dnn.dropout_scaling=inverted pretrain.shuffle=true finetune.shuffle=true
  variant all_three random "$seed" dnn.dropout_scaling=inverted finetune.shuffle=true
done
log "done"
