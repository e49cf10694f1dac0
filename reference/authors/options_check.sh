#!/usr/bin/env bash
# The measured effect of each of our song-level options against the authors'
# conventions, on pretraining_check.sh's encoded features (run that first):
#   reference/authors/options_check.sh OUT
# Each variant: 3 hidden layers, the paper's 100 epochs (and the default budget where
# said), seeds $SEEDS (default 0); the reference is pretraining_check.sh's run of the
# same budget, init and seed.
set -euo pipefail
OUT=$(realpath -m "${1:?usage: options_check.sh OUT}")
SEEDS=${SEEDS:-0}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$ROOT/.venv/bin
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
[ -f "$OUT/base/bof/test.npz" ] || { echo "run pretraining_check.sh $OUT first" >&2; exit 1; }

variant() {  # budget name init seed settings...
  local budget=$1 name=$2 init=$3 seed=$4; shift 4
  local dir="$OUT/runs/ours-$budget-$init-3l-seed$seed-$name"
  [ -f "$dir/metrics.json" ] && return 0
  log "deepbof: $budget budget, $name, $init, seed $seed"
  rm -rf "$dir" && mkdir -p "$dir" && cp -r "$OUT/base/." "$dir/"
  local preset=demo; [ "$budget" = paper ] && preset=paper
  local sets=()
  for s in "$@"; do sets+=("--set=$s"); done
  "$BIN/deepbof-train" --data_dir="$OUT/data" --model_dir="$dir" --preset="$preset" \
      --stages=pretrain,finetune,evaluate --init="$init" --num_hidden_layers=3 \
      --set=pretrain.seed="$seed" --set=finetune.seed="$seed" "${sets[@]}" --overwrite \
      >"$dir.log" 2>&1
}

for seed in $SEEDS; do
  variant paper hidden_bias pretrained "$seed" dnn.pretrained_biases=hidden
  variant paper inverted_dropout pretrained "$seed" dnn.dropout_scaling=inverted
  variant paper inverted_dropout random "$seed" dnn.dropout_scaling=inverted
  variant paper shuffled pretrained "$seed" pretrain.shuffle=true finetune.shuffle=true
  variant paper all_three pretrained "$seed" dnn.pretrained_biases=hidden \
      dnn.dropout_scaling=inverted pretrain.shuffle=true finetune.shuffle=true
  variant paper all_three random "$seed" dnn.dropout_scaling=inverted finetune.shuffle=true
done
# The paper's weight-cost experiment (Figs. 7-8), pretrained, against the default
# increasing costs (0.001, 0.01, 0.1 = the reference runs): decreasing and the three
# uniform settings, seeds $WC_SEEDS (default 0 1 2) at 100 epochs, seed 0 at the default
# budget.
wc() {  # budget seed
  variant "$1" wc_dec pretrained "$2" "pretrain.weight_costs=[0.1,0.01,0.001]"
  variant "$1" wc_uniform_0.001 pretrained "$2" "pretrain.weight_costs=[0.001,0.001,0.001]"
  variant "$1" wc_uniform_0.01 pretrained "$2" "pretrain.weight_costs=[0.01,0.01,0.01]"
  variant "$1" wc_uniform_0.1 pretrained "$2" "pretrain.weight_costs=[0.1,0.1,0.1]"
}
for seed in ${WC_SEEDS:-0 1 2}; do wc paper "$seed"; done
wc default 0
log "done"
