#!/usr/bin/env bash
# Builds historycheck, the chaos suite's history checker (Porcupine, from the Go module proxy),
# into OUT_DIR (default: .tools/historycheck). Go's build cache makes a second run instant.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../.tools/historycheck}
command -v go >/dev/null 2>&1 || { echo "!! go is not installed: historycheck is built from Go modules" >&2; exit 1; }
mkdir -p "$out"
(cd "$here" && go build -trimpath -o "$out/historycheck" .)
echo "==> historycheck ready in $out"
