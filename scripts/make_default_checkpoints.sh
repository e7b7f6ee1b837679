#!/usr/bin/env bash
# Rebuild the shipped default checkpoints from nothing, offline, on CPU (or a GPU if present):
# data -> single-item pretraining -> AFA / CNN CAM / fully supervised runs -> evaluation -> export.
# Each step is resumable: re-running the script skips what is already done; a killed training
# run continues where it stopped (python -m core.train --resume).
# Usage: bash scripts/make_default_checkpoints.sh [RUNS_DIR]   (default: runs/)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RUNS=${1:-runs}
mkdir -p "$RUNS" checkpoints

data() {  # data: the benchmark (160 px) and the single-item pretraining sets
  [[ -f data/scenes160/meta.json ]] || $PY -m core.data.scenes --out data/scenes160 --seed 0 --train 3000 \
      --val 300 --size 160 --scale-min 1.6 --scale-max 3.2
  # MiT-b0: single items with the benchmark's clutter and scale
  [[ -f data/scenes_single96/meta.json ]] || $PY -m core.data.scenes --out data/scenes_single96 --seed 1 \
      --train 30000 --val 600 --size 96 --min-objects 1 --max-objects 1 --scale-min 1.6 --scale-max 2.6
  # MiT-b0, stage 2: single items and item-free images (a third), for tile-wise classification
  [[ -f data/scenes_single96_bg/meta.json ]] || $PY -m core.data.scenes --out data/scenes_single96_bg --seed 3 \
      --train 20000 --val 600 --size 96 --min-objects 0 --max-objects 1 --scale-min 1.6 --scale-max 2.6
  # ResNet-10-T: easier single items (no clutter, plain items, 64 px)
  [[ -f data/single64_easy/meta.json ]] || $PY -m core.data.scenes --out data/single64_easy --seed 2 \
      --train 30000 --val 600 --size 64 --min-objects 1 --max-objects 1 --scale-min 1.4 --scale-max 1.75 \
      --clutter 0 --texture 0
}

# shellcheck source=scripts/train_or_resume.sh
source scripts/train_or_resume.sh

data
train pretrain_mit_b0 core/configs/scenes_pretrain.yaml
$PY -m core.convert export "$RUNS/pretrain_mit_b0/checkpoint.safetensors" \
    "$RUNS/pretrain_mit_b0/encoder.safetensors" --encoder-only
train pretrain_tiles_mit_b0 core/configs/scenes_pretrain_tiles.yaml \
    model.pretrained="$RUNS/pretrain_mit_b0/encoder.safetensors"
train pretrain_resnet10t core/configs/scenes_pretrain_cnn.yaml
$PY -m core.convert export "$RUNS/pretrain_tiles_mit_b0/checkpoint.safetensors" \
    checkpoints/encoder_mit_b0_fmnist.safetensors --fp16 --encoder-only
$PY -m core.convert export "$RUNS/pretrain_resnet10t/checkpoint.safetensors" \
    checkpoints/encoder_resnet10t_fmnist.safetensors --fp16 --encoder-only

train afa_mit_b0 core/configs/scenes.yaml
train cnn_cam_resnet10t core/configs/scenes_cnn.yaml
train supervised_mit_b0 core/configs/scenes.yaml train.mode=supervised

for name in afa_mit_b0 cnn_cam_resnet10t supervised_mit_b0; do
  $PY -m core.convert export "$RUNS/$name/checkpoint.safetensors" "checkpoints/${name}_scenes.safetensors" --fp16
  $PY -m core.evaluate --checkpoint "checkpoints/${name}_scenes.safetensors" --data data/scenes160 --split val \
      --crf --out "checkpoints/${name}_scenes.eval.json"
done
