#!/usr/bin/env bash
# Starts (or stops) the servers Lucky's tests use, on loopback only:
#   five redis-server nodes on 127.0.0.1:7001-7005, no persistence;
#   one etcd member on 127.0.0.1:2379 (peer 2380), data in a temporary folder;
#   a three-member etcd cluster on 127.0.0.1:22791-22793 (peers 22801-22803; the tests' own
#   single members use 23790-23799), data under $DIR/cluster/m1..m3, for the fail-over tests
#   (LUCKY_ETCD_CLUSTER);
#   ZooKeeper (Debian's 3.8 on the installed JRE): a standalone server on 127.0.0.1:2181 and a
#   three-member ensemble on 127.0.0.1:2281-2283 (quorum ports 22881-22883, elections
#   23881-23883), tickTime 200 ms, syncLimit 5, sessions of 0.4-60 s, data under $DIR/zk
#   (`zk-nosync` adds a standalone server on 127.0.0.1:2191 that does not sync its
#   transaction log to disk, for zk-bench's comparison of the client without the disk);
#   the machine's PostgreSQL on 127.0.0.1:5432 and MariaDB on 127.0.0.1:3306 (database
#   `test`), if they are installed but stopped.
# Installs redis-server, etcd-server, etcd-client, zookeeper and protobuf-compiler (protoc,
# which the etcd-client crate's build needs), Curator and a JDK from Debian, and kazoo from
# PyPI, when they are missing. Idempotent. `chaos-deps` installs what the chaos harness adds
# (nftables from Debian, node-redlock's packages from npm).
set -euo pipefail
DIR="${LUCKY_SERVICES_DIR:-/tmp/lucky-services}"
PORTS="7001 7002 7003 7004 7005"
MEMBERS="1 2 3"
CLUSTER="m1=http://127.0.0.1:22801,m2=http://127.0.0.1:22802,m3=http://127.0.0.1:22803"

# need COMMAND PACKAGE: installs PACKAGE from Debian unless COMMAND is on the PATH.
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  install_pkg "$2"
}

install_pkg() {
  echo "installing $1 from Debian" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
  else
    sudo apt-get update -qq >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
  fi
}

start() {
  need redis-server redis-server
  need redis-cli redis-tools
  need openssl openssl   # certificates for the TLS test
  mkdir -p "$DIR"
  for p in $PORTS; do
    if redis-cli -h 127.0.0.1 -p "$p" ping >/dev/null 2>&1; then continue; fi
    mkdir -p "$DIR/redis-$p"
    redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
      --dir "$DIR/redis-$p" --pidfile "$DIR/redis-$p.pid" --logfile "$DIR/redis-$p.log"
  done
  for p in $PORTS; do
    for _ in $(seq 50); do
      redis-cli -h 127.0.0.1 -p "$p" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
    redis-cli -h 127.0.0.1 -p "$p" ping >/dev/null || { echo "redis on $p did not start" >&2; exit 1; }
  done
  echo "redis nodes up on 127.0.0.1:${PORTS// /,}"
  need protoc protobuf-compiler
  need etcd etcd-server
  need etcdctl etcd-client
  need pgbouncer pgbouncer   # the advisory-mode refusal test starts its own
  if ! ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379 endpoint health >/dev/null 2>&1; then
    rm -rf "$DIR/etcd"
    mkdir -p "$DIR/etcd"
    nohup etcd --name lucky --data-dir "$DIR/etcd/data" \
      --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
      --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
      --initial-cluster lucky=http://127.0.0.1:2380 \
      >"$DIR/etcd.log" 2>&1 &
    echo $! >"$DIR/etcd.pid"
  fi
  for _ in $(seq 100); do
    ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379 endpoint health >/dev/null 2>&1 && break
    sleep 0.1
  done
  ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379 endpoint health >/dev/null \
    || { echo "etcd on 2379 did not start (see $DIR/etcd.log)" >&2; exit 1; }
  echo "etcd up on 127.0.0.1:2379"
  start_cluster
  start_zookeeper
  # No MongoDB server can be had here: the MongoDB backend's wire tests run against a mock
  # (tests/mongo/mock.py) on PyPI's mockupdb.
  if ! python3 -c 'import mockupdb' 2>/dev/null; then
    echo "installing mockupdb from PyPI" >&2
    python3 -m pip install -q --root-user-action=ignore mockupdb >/dev/null
  fi
  # PostgreSQL and MariaDB run on this kind of machine already (the SQL backends' tests use
  # them); start them if they stopped, and say when one is not there.
  if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
    fi
  fi
  pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && echo "PostgreSQL up on 127.0.0.1:5432" \
    || echo "PostgreSQL not running on 127.0.0.1:5432" >&2
  if command -v mysqladmin >/dev/null && ! mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1; then
    if command -v mysqld_safe >/dev/null; then
      (nohup mysqld_safe >/dev/null 2>&1 &)
      for _ in $(seq 50); do mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1 && break; sleep 0.2; done
    fi
  fi
  if mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1; then
    mysql -h 127.0.0.1 -u root -e 'CREATE DATABASE IF NOT EXISTS test' >/dev/null 2>&1 || true
    echo "MariaDB up on 127.0.0.1:3306"
  else
    echo "MariaDB not running on 127.0.0.1:3306" >&2
  fi
}

# Whether process $1 runs (a killed process not yet reaped is a zombie: it does not).
alive() {
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

healthy() {
  ETCDCTL_API=3 etcdctl --endpoints="http://127.0.0.1:$1" --command-timeout=1s endpoint health >/dev/null 2>&1
}

# Starts every member of the three-member cluster that does not run (a member killed by a
# test comes back with its data and rejoins), then waits until all three serve.
start_cluster() {
  mkdir -p "$DIR/cluster"
  for m in $MEMBERS; do
    local port=$((22790 + m)) peer=$((22800 + m)) pidf="$DIR/cluster/m$m.pid"
    if [ -f "$pidf" ] && alive "$(cat "$pidf")"; then continue; fi
    if healthy "$port"; then continue; fi   # started by someone else
    nohup etcd --name "m$m" --data-dir "$DIR/cluster/m$m" \
      --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
      --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
      --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token lucky-cluster \
      >>"$DIR/cluster/m$m.log" 2>&1 &
    echo $! >"$pidf"
  done
  for m in $MEMBERS; do
    local port=$((22790 + m))
    for _ in $(seq 150); do
      healthy "$port" && break
      sleep 0.1
    done
    healthy "$port" || { echo "etcd member m$m on $port did not start (see $DIR/cluster/m$m.log)" >&2; exit 1; }
  done
  echo "etcd cluster up on 127.0.0.1:22791,22792,22793"
}

# Whether the ZooKeeper server on port $1 serves (standalone, or in a quorum).
zk_ok() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && printf srvr >&3 && cat <&3" 2>/dev/null \
    | grep -Eq '^Mode: (standalone|leader|follower)'
}

# The client port of ZooKeeper server $1.
zk_port() {
  case "$1" in
    s) echo 2181 ;;
    n) echo 2191 ;;
    *) echo $((2280 + $1)) ;;
  esac
}

# Writes the configuration of ZooKeeper server $1 (standalone: s; without disk syncs: n;
# ensemble member: 1..3).
zk_conf() {
  local id=$1 d="$DIR/zk/$1" port
  mkdir -p "$d/data"
  port=$(zk_port "$id")
  {
    echo "tickTime=200"
    echo "initLimit=20"
    echo "syncLimit=5"
    echo "dataDir=$d/data"
    echo "clientPort=$port"
    echo "clientPortAddress=127.0.0.1"
    echo "minSessionTimeout=400"
    echo "maxSessionTimeout=60000"
    echo "admin.enableServer=false"
    echo "4lw.commands.whitelist=ruok,srvr,mntr"
    echo "zookeeper.snapshot.trust.empty=true"
    if [ "$id" = n ]; then echo "forceSync=no"; fi
    if [ "$id" != s ] && [ "$id" != n ]; then
      for m in 1 2 3; do
        echo "server.$m=127.0.0.1:$((22880 + m)):$((23880 + m))"
      done
      echo "$id" >"$d/data/myid"
    fi
  } >"$d/zoo.cfg"
}

# Starts ZooKeeper server $1 (s or 1..3) unless it runs.
zk_start() {
  local id=$1 d="$DIR/zk/$1" port
  port=$(zk_port "$id")
  if [ -f "$d/pid" ] && alive "$(cat "$d/pid")"; then return 0; fi
  zk_ok "$port" && return 0   # started by someone else
  zk_conf "$id"
  nohup java -Xmx256m -Dzookeeper.log.dir="$d" -Dzookeeper.snapshot.trust.empty=true \
    -cp "/usr/share/java/zookeeper.jar:/usr/share/java/zookeeper-jute.jar:/etc/zookeeper/conf" \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$d/zoo.cfg" >>"$d/server.log" 2>&1 &
  echo $! >"$d/pid"
}

start_zookeeper() {
  need java default-jre-headless
  [ -f /usr/share/java/zookeeper.jar ] || need zkServer.sh zookeeper
  # Curator (and a JDK to run its test peer from source), for the interop test.
  [ -f /usr/share/java/curator-recipes.jar ] || install_pkg libcurator-recipes-java
  need javac default-jdk-headless
  # kazoo (ZooKeeper's Python client), for the interop test and zk-bench's peer.
  if ! python3 -c 'import kazoo' 2>/dev/null; then
    echo "installing kazoo from PyPI" >&2
    python3 -m pip install -q --root-user-action=ignore kazoo >/dev/null
  fi
  mkdir -p "$DIR/zk"
  for id in s 1 2 3; do zk_start "$id"; done
  for port in 2181 2281 2282 2283; do
    for _ in $(seq 150); do zk_ok "$port" && break; sleep 0.2; done
    zk_ok "$port" || { echo "ZooKeeper on $port did not start (see $DIR/zk/*/server.log)" >&2; exit 1; }
  done
  echo "ZooKeeper up on 127.0.0.1:2181 (standalone) and 127.0.0.1:2281,2282,2283 (ensemble)"
}

stop_zookeeper() {
  for id in s n 1 2 3; do
    local pidf="$DIR/zk/$id/pid"
    if [ -f "$pidf" ]; then
      kill -CONT "$(cat "$pidf")" 2>/dev/null || true
      kill "$(cat "$pidf")" 2>/dev/null || true
      rm -f "$pidf"
    fi
  done
}

stop_cluster() {
  for m in $MEMBERS; do
    local pidf="$DIR/cluster/m$m.pid"
    if [ -f "$pidf" ]; then
      kill -CONT "$(cat "$pidf")" 2>/dev/null || true
      kill "$(cat "$pidf")" 2>/dev/null || true
      rm -f "$pidf"
    fi
  done
}

stop() {
  stop_zookeeper
  stop_cluster
  if [ -f "$DIR/etcd.pid" ]; then
    kill "$(cat "$DIR/etcd.pid")" 2>/dev/null || true
    rm -f "$DIR/etcd.pid"
  fi
  for p in $PORTS; do
    if [ -f "$DIR/redis-$p.pid" ]; then
      kill "$(cat "$DIR/redis-$p.pid")" 2>/dev/null || true
      rm -f "$DIR/redis-$p.pid"
    fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  # Only the three-member cluster (the fail-over tests restart members they killed with it).
  start-cluster) need etcd etcd-server; need etcdctl etcd-client; start_cluster ;;
  stop-cluster) stop_cluster ;;
  # Only ZooKeeper (tests restart servers they killed with it).
  start-zookeeper) start_zookeeper ;;
  zk-nosync)
    start_zookeeper
    zk_start n
    for _ in $(seq 100); do zk_ok 2191 && break; sleep 0.2; done
    zk_ok 2191 || { echo "ZooKeeper without disk syncs did not start" >&2; exit 1; }
    echo "ZooKeeper without disk syncs up on 127.0.0.1:2191" ;;
  # What the chaos harness needs beyond the servers: nft (nftables) for partitions and loss,
  # iproute2 for the namespaces, a C compiler for its clock shim; the peer node-redlock needs
  # Node.js and its packages (npm ci, from the lock file).
  chaos-deps)
    need nft nftables; need ip iproute2; need cc gcc; need redis-server redis-server; need redis-cli redis-tools
    peer="$(dirname "$0")/../tests/chaos/node-redlock"
    if command -v npm >/dev/null 2>&1 && [ ! -d "$peer/node_modules" ]; then
      npm ci --prefix "$peer" --no-audit --no-fund >/dev/null \
        || echo "npm ci failed: the node-redlock peer cannot run (Lucky's own rows can)" >&2
    fi ;;
  *) echo "usage: $0 start|stop|start-cluster|stop-cluster|start-zookeeper|chaos-deps" >&2; exit 64 ;;
esac
