#!/usr/bin/env bash
# The README's first command: installs what is missing, builds gse, and starts
# a complete platform on this host. Ctrl-C stops it.
#   scripts/quickstart.sh [--agents N] [--dir DIR] [other gse-server quickstart flags]
#       one server with every role on the embedded store, and N local agents
#   scripts/quickstart.sh --cluster N [--agents K] [--dir DIR] [...]
#       first a ZooKeeper and a Redis (Debian's packages, installed if missing)
#       on free loopback ports, their data and logs in DIR/zookeeper and
#       DIR/redis; then N server nodes joined through them and K agents that
#       know every node. Ctrl-C stops the nodes and agents, then both.
#   scripts/quickstart.sh --cloud-area ID:K [...]   (repeatable, with either)
#       also a gse-proxy for cloud area ID and K agents behind it.
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=0
dir=./gse-quickstart
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cluster)
      [ $# -ge 2 ] || { echo "error: --cluster needs the number of nodes" >&2; exit 2; }
      cluster="$2"; shift 2 ;;
    --dir)
      [ $# -ge 2 ] || { echo "error: --dir needs a directory" >&2; exit 2; }
      dir="$2"; args+=("$1" "$2"); shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
case "$cluster" in
  ''|*[!0-9]*) echo "error: --cluster $cluster: give a number of nodes" >&2; exit 2 ;;
esac

if [ "$cluster" = 0 ]; then
  scripts/install-deps.sh
  echo "building gse (release) ..."
  cargo build --release --bins --quiet
  exec target/release/gse-server quickstart "${args[@]}"
fi

scripts/install-deps.sh --cluster
echo "building gse (release) ..."
cargo build --release --bins --quiet

# The first port from $1 on that nobody on 127.0.0.1 answers (bash's
# /dev/tcp: no nc or ss needed).
free_port() {
  local p
  for p in $(seq "$1" $(($1 + 200))); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  echo "error: no free port in $1..$(($1 + 200)) on 127.0.0.1" >&2
  return 1
}

# DIR is private (quickstart keeps secrets there); the services go under it.
mkdir -p "$dir"
chmod 700 "$dir"
dir="$(cd "$dir" && pwd)"
zk_dir="$dir/zookeeper"
redis_dir="$dir/redis"
mkdir -p "$zk_dir/data" "$redis_dir"

zk_pid=""
redis_pid=""
stop_services() {
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
  [ -n "$zk_pid" ] && kill "$zk_pid" 2>/dev/null || true
  [ -n "$redis_pid$zk_pid" ] && echo "stopped Redis and ZooKeeper"
  return 0
}
trap stop_services EXIT
# Ctrl-C reaches quickstart (the foreground process), which stops the nodes
# and agents; the services run in their own sessions (setsid), so they
# outlive it and are stopped last, above. A handler, not an ignore: an
# ignored signal would be ignored by quickstart too.
trap 'true' INT TERM

zk_port="$(free_port 32181)"
cat >"$zk_dir/zoo.cfg" <<CFG
tickTime=2000
dataDir=$zk_dir/data
clientPort=$zk_port
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,mntr
CFG
echo "starting ZooKeeper on 127.0.0.1:$zk_port (log: $zk_dir/zk.out) ..."
setsid java -Xmx256m -cp /etc/zookeeper/conf:/usr/share/java/zookeeper.jar \
  org.apache.zookeeper.server.ZooKeeperServerMain "$zk_dir/zoo.cfg" >"$zk_dir/zk.out" 2>&1 &
zk_pid=$!

redis_port="$(free_port 36379)"
echo "starting Redis on 127.0.0.1:$redis_port (log: $redis_dir/redis.log) ..."
setsid redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$redis_dir" --logfile "$redis_dir/redis.log" >/dev/null 2>&1 &
redis_pid=$!

# Readiness: ZooKeeper reports its Mode to srvr once it serves sessions
# (ruok answers imok earlier, while clients are still turned away); Redis
# answers PING with PONG.
zk_serving() {
  (exec 3<>"/dev/tcp/127.0.0.1/$zk_port" && printf srvr >&3 && timeout 1 cat <&3) 2>/dev/null | grep -q '^Mode:'
}
for _ in $(seq 300); do
  zk_serving && break
  kill -0 "$zk_pid" 2>/dev/null || { echo "error: ZooKeeper exited; $zk_dir/zk.out ends with:" >&2; tail -n 20 "$zk_dir/zk.out" >&2; exit 1; }
  sleep 0.1
done
zk_serving \
  || { echo "error: ZooKeeper on 127.0.0.1:$zk_port not ready after 30 s; see $zk_dir/zk.out" >&2; exit 1; }
for _ in $(seq 300); do
  [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] && break
  kill -0 "$redis_pid" 2>/dev/null || { echo "error: Redis exited; see $redis_dir/redis.log" >&2; exit 1; }
  sleep 0.1
done
[ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] \
  || { echo "error: Redis on 127.0.0.1:$redis_port not ready after 30 s; see $redis_dir/redis.log" >&2; exit 1; }

status=0
target/release/gse-server quickstart --nodes "$cluster" \
  --zookeeper "127.0.0.1:$zk_port" --redis "redis://127.0.0.1:$redis_port/" \
  "${args[@]}" || status=$?
exit "$status"
