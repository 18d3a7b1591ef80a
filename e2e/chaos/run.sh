#!/usr/bin/env bash
# `make chaos`: the chaos suite (tests/chaos.rs) run long — one run of CHAOS_RUN_SECONDS of faults
# after another, each with the next seed, until the runs together reach CHAOS_GRANTS grants and
# every fault kind CHAOS_FAULTS_EACH times. Each run's summary goes to OUT/runs.jsonl, their total
# to OUT/total.json, and one summary line is printed. Stops at the first run that fails.
# Usage: run.sh [OUT]   (default: bench/chaos)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/bench/chaos}
goal=${CHAOS_GRANTS:-10000}
each=${CHAOS_FAULTS_EACH:-20}
seconds=${CHAOS_RUN_SECONDS:-600}
seed=${CHAOS_SEED:-$(date +%s)}
mkdir -p "$out"
: > "$out/runs.jsonl"
cd "$repo"
until python3 "$here/total.py" "$out/runs.jsonl" "$goal" "$each" > "$out/total.json"; do
  echo "==> chaos run, seed $seed, $seconds s of faults ($(python3 "$here/total.py" --progress "$out/runs.jsonl" "$goal" "$each"))"
  # The test's exit status, not grep's (which filters its output to the summary lines).
  set +e
  LOCKKEEPER_CHAOS_SEED=$seed LOCKKEEPER_CHAOS_SECONDS=$seconds LOCKKEEPER_CHAOS_OUT=$repo/target/chaos \
    cargo test --quiet --test chaos -- --nocapture 2>&1 | grep -E '^chaos|panicked|FAILED|test result'
  status=${PIPESTATUS[0]}
  set -e
  summary=$repo/target/chaos/seed-$seed/summary.json
  [ -f "$summary" ] && python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); s["seed"]=int(sys.argv[2]); print(json.dumps(s, sort_keys=True))' "$summary" "$seed" >> "$out/runs.jsonl"
  if [ "$status" != 0 ]; then
    echo "!! the chaos run with seed $seed failed: its history and logs are in target/chaos/seed-$seed" >&2
    exit 1
  fi
  seed=$((seed + 1))
done
cat "$out/total.json"
