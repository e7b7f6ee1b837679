# Sourced by the rebuild scripts. Needs PY (the Python to run) and RUNS (the runs folder).
# train NAME CONFIG [overrides...]: start RUNS/NAME, resume it when unfinished, skip it when finished.
train() {
  local name=$1 config=$2; shift 2
  local dir="$RUNS/$name"
  if [[ -f "$dir/status.json" ]] && grep -q '"finished"' "$dir/status.json"; then return; fi
  if [[ -f "$dir/train_state.safetensors" ]]; then
    $PY -m core.train --resume "$dir"
  else
    rm -rf "$dir"
    $PY -m core.train --config "$config" --run-dir "$dir" "$@"
  fi
}
