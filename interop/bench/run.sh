#!/usr/bin/env bash
# Runs the shared MQTT benchmark kit against polybroker and Mosquitto, interleaved in one
# run, and prints the ratio table (medians over the repeats).
#
#   interop/bench/run.sh [-r REPEATS] [-s "SCENARIOS"] [-o OUTDIR]
#
# Needs the kit in ../shared/bench beside the checkout, gcc, jq and Debian's mosquitto
# (installed here when missing). polybroker runs from this checkout's .venv.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
kit=${BENCH_KIT:-$top/../shared/bench}
repeats=3 scenarios="fanin0 fanout qos1 qos2e lat1 conn retained subs100k"
out=/tmp/polybroker-bench-$(date +%Y%m%d-%H%M%S)
while getopts "r:s:o:" opt; do
  case $opt in r) repeats=$OPTARG;; s) scenarios=$OPTARG;; o) out=$OPTARG;; *) exit 2;; esac
done
missing=""
command -v mosquitto >/dev/null || missing="$missing mosquitto"
command -v jq >/dev/null || missing="$missing jq"
if [ -n "$missing" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
[ -x "$top/.venv/bin/polybroker" ] || make -C "$top" .venv/.installed
# The kit builds its load generator next to itself; work on a writable copy.
work=$(mktemp -d)
cp "$kit"/* "$work"/
chmod -R u+w "$work"
# Every start gets an empty data directory: the kit reuses ports, and a directory named
# after the port would hand one scenario's durable state (100k retained messages, 100k
# subscriptions) to the next. The inner exec keeps the broker's PID the one the kit watches.
"$work/run.sh" -r "$repeats" -s "$scenarios" -o "$out" mosquitto \
  "polybroker=sh -c 'exec $top/.venv/bin/polybroker serve --config $top/config/bench.toml --listen mqtt://127.0.0.1:{port} --data-dir \$(mktemp -d -p $out data-XXXXXX)'"
echo "results: $out/results.jsonl, table: $out/report.md"
