# Sourced by the rebuild scripts. Needs PY (the Python to run) and RUNS (the runs folder).
# train NAME CONFIG [overrides...]: start RUNS/NAME, resume it when unfinished, skip it when finished.
# A run folder that holds another recipe (its config.yaml differs from CONFIG with the overrides:
# an edited config, a changed schedule) is moved aside to RUNS/old-TIME/NAME and the run redone.
# Each start and end is logged with the clock time, so a rebuild's log shows what each run took.
train() {
  local name=$1 config=$2; shift 2
  local dir="$RUNS/$name" start rc=0 changes
  if [[ -f "$dir/config.yaml" ]]; then
    changes=$($PY -m core.config "$config" "$@" --against "$dir/config.yaml") || rc=$?
    if [[ $rc == 1 ]]; then
      local old; old="$RUNS/old-$(date +%Y%m%d-%H%M%S)"
      mkdir -p "$old" && mv "$dir" "$old/"
      echo "[$(date +%T)] $name: its run had another recipe (${changes//$'\n'/; }): moved to $old/$name"
    elif [[ $rc != 0 ]]; then
      return "$rc"
    fi
  fi
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
