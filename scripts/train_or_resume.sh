# Sourced by the rebuild scripts. Needs PY (the Python to run) and RUNS (the runs folder).
# train NAME CONFIG [overrides...]: start RUNS/NAME, resume it when unfinished, skip it when finished.
# Each start and end is logged with the clock time, so a rebuild's log shows what each run took.
train() {
  local name=$1 config=$2; shift 2
  local dir="$RUNS/$name" start
  if [[ -f "$dir/status.json" ]] && grep -q '"finished"' "$dir/status.json"; then return; fi
  start=$(date +%s)
  if [[ -f "$dir/train_state.safetensors" ]]; then
    echo "[$(date +%T)] $name: resumed"
    $PY -m core.train --resume "$dir"
  else
    echo "[$(date +%T)] $name: started"
    rm -rf "$dir"
    $PY -m core.train --config "$config" --run-dir "$dir" "$@"
  fi
  echo "[$(date +%T)] $name: trained in $(( ($(date +%s) - start) / 60 )) min"
}
