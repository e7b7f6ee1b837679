#!/usr/bin/env bash
# The paper's ablation (Table 1) on the scenes benchmark: four training runs that add PAR, AFA and
# L_reg in turn to the CAM baseline, each evaluated on the first LIMIT validation images.
# Shorter than the shipped AFA run: ITERS iterations with the same proportions of the schedule,
# batch BATCH (4, the paper's total batch; the shipped run has 8).
# Usage: bash scripts/ablation.sh [RUNS_DIR] [ITERS] [LIMIT] [BATCH]    (defaults: runs 300 100 4, as the README)
# Each finished run is skipped on a re-run; results go to docs/results/abl_NAME.eval.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RUNS=${1:-runs}
ITERS=${2:-300}
LIMIT=${3:-100}
BATCH=${4:-4}
mkdir -p "$RUNS" docs/results

schedule=(train.max_iters="$ITERS" train.batch_size="$BATCH" train.cam_iters=$((ITERS / 10)) train.aff_label_iters=$((ITERS * 3 / 10))
          optim.warmup_iters=$((ITERS * 3 / 40)) train.eval_every=0 train.save_every=100)
declare -A variants=(
  [baseline]="train.use_par=false train.use_aff=false train.use_reg=false"
  [par]="train.use_aff=false train.use_reg=false"
  [afa]="train.use_reg=false"
  [afa_reg]=""
)
# shellcheck source=scripts/train_or_resume.sh
source scripts/train_or_resume.sh
for name in baseline par afa afa_reg; do
  # shellcheck disable=SC2086
  train "abl_$name" core/configs/scenes.yaml "${schedule[@]}" ${variants[$name]}
  [[ -f "docs/results/abl_$name.eval.json" ]] || $PY -m core.evaluate --checkpoint "$RUNS/abl_$name/checkpoint.safetensors" \
      --data data/scenes160 --split val --limit "$LIMIT" --out "docs/results/abl_$name.eval.json"
done
$PY scripts/results_table.py baseline=docs/results/abl_baseline.eval.json +PAR=docs/results/abl_par.eval.json \
    +AFA=docs/results/abl_afa.eval.json +L_reg=docs/results/abl_afa_reg.eval.json
