#!/usr/bin/env bash
# Stops the sandbox; its data stays in DIR.
set -uo pipefail
dir=$1
pidfile="$dir/zookeeper/pid"
if [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null; then
  echo "==> ZooKeeper stopped (data kept in $dir/zookeeper/data)"
else
  echo "==> no sandbox ZooKeeper running"
fi
rm -f "$pidfile"
