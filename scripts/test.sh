#!/usr/bin/env bash
# The whole test suite, as README.md states it: starts the servers, runs unit, property,
# scenario and real-server tests, then the simulator's CI sweep (2000 seeds per scenario), a
# determinism check, and proof that every injectable bug is caught.
set -euo pipefail
cd "$(dirname "$0")/.."

SEEDS="${LUCKY_SIM_CI_SEEDS:-2000}"

# Real servers for the adapter tests (installed from Debian when missing).
bash scripts/services.sh start

# cargo builds the `lucky` command line for the tests that run it (lucky-tests' own binary).
cargo test --workspace --all-features

echo "== loom models: the guard/driver shared state, the in-memory lock table"
RUSTFLAGS="--cfg lucky_loom" CARGO_TARGET_DIR=target/loom cargo test -p lucky --features redis,memory --lib loom

echo "== the RedLock machine from plain threads, no async runtime"
cargo run -q -p lucky --features redis --example redlock_blocking
echo "== the lease machine on the in-memory table from plain threads"
cargo run -q -p lucky --features memory --example memory_blocking
echo "== lock files from plain threads"
cargo run -q -p lucky --features file --example file_blocking
echo "== a lease machine on a hand-written event loop; a deterministic simulation of your own"
cargo run -q -p lucky --features memory --example poll_loop > /dev/null
cargo run -q --release -p lucky --features memory --example own_simulation -- 1 200
echo "== a user-side invariant over every machine, from lucky-core's proptest strategies"
cargo run -q -p lucky-core --features proptest --example user_invariant

echo "== chaos: four rows of the guarantee tables on real servers in network namespaces, one short run each"
# The full matrix (every row, 20 runs each) is README.md's "Real-world chaos" command.
bash scripts/services.sh chaos-deps
cargo run -q -p lucky-tests --all-features --bin chaos -- suite --runs 1 --secs 10 --require-breaks no \
  --rows redis-partition,redis-clock-jump,etcd-partition,etcd-member-pause

cargo build --release -p lucky-sim
SIM=target/release/lucky-sim

echo "== simulator sweep: $SEEDS seeds per scenario"
"$SIM" sweep --scenario all --seeds "$SEEDS"

echo "== determinism: one seed twice, every scenario of every backend"
for sc in $("$SIM" list | sed '/^$/q' | awk 'NF { print $1 }'); do
  a=$("$SIM" run --scenario "$sc" --seed 424242 | tail -n 1)
  b=$("$SIM" run --scenario "$sc" --seed 424242 | tail -n 1)
  echo "$sc: $a / $b"
  [ "$a" = "$b" ] || { echo "FAIL: the same seed gave different traces"; exit 1; }
  case "$a" in trace-hash=*) ;; *) echo "FAIL: no trace-hash line"; exit 1 ;; esac
done

echo "== injected bugs must be caught"
for bug in $("$SIM" list | sed -n '/^injectable bugs/,$p' | tail -n +2); do
  if "$SIM" sweep --scenario all --seeds "$SEEDS" --inject-bug "$bug" > "/tmp/lucky-bug-$bug.txt" 2>/dev/null; then
    echo "FAIL: bug $bug was not caught"; tail -n 3 "/tmp/lucky-bug-$bug.txt"; exit 1
  fi
  echo "caught $bug: $(grep -c '^FAIL' "/tmp/lucky-bug-$bug.txt") replays printed; $(tail -n 1 "/tmp/lucky-bug-$bug.txt")"
done
echo "simulator: all checks passed"
