#!/usr/bin/env bash
# The whole test suite: starts the servers the tests need, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-features
