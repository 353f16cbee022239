#!/usr/bin/env bash
# Instructions per admission request, for `bootvolume serve` and for the ceiling (the same
# stack answering a fixed AdmissionReview, from benches/load.rs), counted by callgrind.
#
# Wall-clock figures move with whatever else runs on the machine; instruction counts do not.
# Each server runs under `valgrind --tool=callgrind`; the client (benches/load.rs --client,
# not under valgrind) sends the load benchmark's review over one HTTP/1.1 keep-alive TLS
# connection. Per path, the counters are zeroed, a connection sends W requests, the counts
# are dumped; again with W + N requests. The difference divided by N is the cost of one
# request (connection setup, the TLS handshake and the warm-up cancel out).
# Everything the server process does counts: TLS, HTTP, decoding, rules, audit log line.
#
# Usage: scripts/instructions.sh            (N=200 W=20; env N, W override;
#        BOOTVOLUME_BIN=path measures another build of the webhook;
#        BOOTVOLUME_BENCH_PRETTY=1 sends the fixture indented instead of compact)
# `perf stat -e instructions` would do the same without valgrind, but hardware counters
# are not available in most VMs (this one answers `<not supported>`), so callgrind it is.
# Output: a Markdown table on stdout (also target/bench/instructions.md); the callgrind
# files stay in target/bench/callgrind/ for `callgrind_annotate`.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200}
W=${W:-20}
out=target/bench
cg=$out/callgrind
mkdir -p "$out"
rm -rf "$cg"
mkdir -p "$cg"

# Both executables from cargo itself (the target directory may not be where one expects).
artifacts=$(cargo bench --locked --bench load --no-run --message-format=json 2>/dev/null |
  jq -r 'select(.reason == "compiler-artifact" and .executable != null) | "\(.target.name) \(.executable)"')
bench=$(awk '$1 == "load" {print $2}' <<<"$artifacts")
bin=${BOOTVOLUME_BIN:-$(awk '$1 == "bootvolume" {print $2}' <<<"$artifacts")}
[[ -x $bench && -x $bin ]] || { echo "build failed (bench: $bench, bin: $bin)" >&2; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
read -r ca cert key < <("$bench" --gen-certs "$tmp/certs")

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# total instructions in the newest callgrind dump of process $1
total() {
  local f
  f=$(ls "$cg"/cg.out."$1".* | awk -F. '{print $NF, $0}' | sort -n | tail -1 | cut -d' ' -f2)
  awk '/^(totals|summary):/ {print $2; exit}' "$f"
}

# measure NAME PID ADDR PATH: prints instructions per request
measure() {
  local name=$1 pid=$2 addr=$3 path=$4 a b
  callgrind_control -z "$pid" >/dev/null 2>&1
  "$bench" --client "$addr" "$ca" "$path" "$W"
  callgrind_control --dump="$name-$W" "$pid" >/dev/null 2>&1
  a=$(total "$pid")
  callgrind_control -z "$pid" >/dev/null 2>&1
  "$bench" --client "$addr" "$ca" "$path" $((W + N))
  callgrind_control --dump="$name-$((W + N))" "$pid" >/dev/null 2>&1
  b=$(total "$pid")
  echo $(((b - a) / N))
}

valgrind_cmd=(valgrind --tool=callgrind --log-file="$cg/valgrind.%p.log" --callgrind-out-file="$cg/cg.out.%p")

# The ceiling prints its address once it listens.
coproc CEILING { exec "${valgrind_cmd[@]}" "$bench" --serve-ceiling "$cert" "$key"; }
pids+=("$CEILING_PID")
read -r ceiling_addr <&"${CEILING[0]}"

port=$(free_port)
mport=$(free_port)
"${valgrind_cmd[@]}" "$bin" serve --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" \
  --tls-cert-file "$cert" --tls-private-key-file "$key" 2>/dev/null &
serve_pid=$!
pids+=("$serve_pid")
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$mport/readyz" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$mport/readyz" >/dev/null || { echo "serve not ready" >&2; exit 1; }

md="| path | serve instr/request | ceiling instr/request | ratio |
|---|---:|---:|---:|"
for path in /validate /mutate; do
  ours=$(measure "serve${path//\//-}" "$serve_pid" "127.0.0.1:$port" "$path")
  ceiling=$(measure "ceiling${path//\//-}" "$CEILING_PID" "$ceiling_addr" "$path")
  ratio=$(python3 -c "print(f'{$ours/$ceiling:.2f}')")
  md+="
| $path | $ours | $ceiling | $ratio |"
done
echo "$md"
body=compact
[[ -n ${BOOTVOLUME_BENCH_PRETTY:-} ]] && body=indented
printf '%s\n\nN=%s requests after W=%s, %s body, %s\n' "$md" "$N" "$W" "$body" "$(date -u +%FT%TZ)" >"$out/instructions.md"
