#!/usr/bin/env bash
# Starts the local sandbox: today a ZooKeeper server on loopback (data kept in DIR).
set -euo pipefail
dir=$1 port=$2
mkdir -p "$dir/zookeeper"
root=$(cd "$(dirname "$0")/../.." && pwd)
ruok() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port; echo ruok >&3; cat <&3" 2>/dev/null; }
if [ "$(ruok)" = imok ]; then
  echo "==> ZooKeeper already answers on 127.0.0.1:$port"
else
  echo "==> starting ZooKeeper on 127.0.0.1:$port (log: $dir/zookeeper/server.log)"
  nohup "$root/target/debug/zookeeper-sandbox" "$dir/zookeeper" "$port" >"$dir/zookeeper/server.log" 2>&1 &
  echo $! >"$dir/zookeeper/pid"
  for _ in $(seq 1 300); do [ "$(ruok)" = imok ] && break; sleep 0.1; done
  [ "$(ruok)" = imok ] || { echo "!! ZooKeeper did not start; see $dir/zookeeper/server.log"; exit 1; }
fi
echo "==> ready. Inspect any lock path, whichever client holds it:"
echo "    $root/target/debug/lockkeeper queue --zookeeper 127.0.0.1:$port --path /lockkeeper/default/demo"
echo "    stop with: make sandbox-down"
