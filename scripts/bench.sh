#!/usr/bin/env bash
# Benchmarks (not part of the test command; the machine must be otherwise idle):
#  1. criterion: rules, mutation and the whole decode + admit + encode path;
#  2. load: `bootvolume serve` against a same-stack ceiling server, TLS, HTTP/1.1
#     keep-alive at 1/16/64 connections and one HTTP/2 run; readiness and memory.
# Results: target/criterion/ and target/bench/load.md. Instructions per request (callgrind,
# not moved by a noisy machine): scripts/instructions.sh. See docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked --bench rules -- --warm-up-time 1 --measurement-time 5
cargo bench --locked --bench load -- --seconds "${LOAD_SECONDS:-5}"
