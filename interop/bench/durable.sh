#!/usr/bin/env bash
# Durable-state benchmark: persistent QoS 1 throughput, restart time with 1M stored
# messages, disk bytes per stored message.
#
#   interop/bench/durable.sh [-r REPEATS] [-o OUTDIR] [-n SESSIONSxMESSAGES]
#
# 1. Throughput: the shared kit's `qos1` scenario (4 publishers -> 1 subscriber, QoS 1,
#    window 16, 64-byte payloads), with the subscriber on a *persistent* session (clean
#    session 0), so that every message is stored before it is acknowledged and deleted
#    when the subscriber acknowledges it. The kit's clients always ask for a clean
#    session; this script builds a copy of its generator where subscribers do not when
#    MQTTLOAD_PERSISTENT_SUBS is set (one line, shown in the output). Brokers, interleaved:
#      polybroker       [storage] defaults: fsync = "batch" (group commit)
#      polybroker-mem   persistence = false (the same broker, all in memory)
#      mosquitto-db     Mosquitto with persistence true: it saves its database every
#                       autosave_interval (1800 s) and at exit, it never fsyncs per message
#      mosquitto        the kit's Mosquitto (persistence false): the reference of the ratios
#    Each run starts from an empty data directory. The broker command lines are printed;
#    the kit's report gives medians and ratios.
# 2. Restart time and disk bytes per stored message: durable_store.py (1000 sessions x
#    1000 stored QoS 1 messages of 64 bytes = 1M records; its docstring explains).
#
# Needs the kit in ../shared/bench beside the checkout, gcc, jq and Debian's mosquitto.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
kit=${BENCH_KIT:-$top/../shared/bench}
repeats=3 size=1000x1000
out=/tmp/polybroker-durable-$(date +%Y%m%d-%H%M%S)
while getopts "r:o:n:" opt; do
  case $opt in r) repeats=$OPTARG;; o) out=$OPTARG;; n) size=$OPTARG;; *) exit 2;; esac
done
missing=""
command -v mosquitto >/dev/null || missing="$missing mosquitto"
command -v jq >/dev/null || missing="$missing jq"
if [ -n "$missing" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
[ -x "$top/.venv/bin/polybroker" ] || make -C "$top" .venv/.installed
mkdir -p "$out"

# The kit builds its generator next to itself: work on a writable copy, with persistent
# subscribers on request.
work=$(mktemp -d)
cp "$kit"/* "$work"/
chmod -R u+w "$work"
sed -i 's|dst\[n++\] = 0x02; /\* clean session / clean start \*/|dst[n++] = (getenv("MQTTLOAD_PERSISTENT_SUBS") \&\& strstr(cid, "-s")) ? 0x00 : 0x02; /* clean session unless a persistent subscriber */|' "$work/mqttload.c"
grep -n "persistent subscriber" "$work/mqttload.c"

cat > "$out/polybroker-mem.toml" <<EOF
log_level = "warning"
[limits]
max_inflight_messages = 20
max_queued_messages = 10000000
[storage]
persistence = false
EOF
# Brokers get ports 18870, 18871, ... in the order given below.
cat > "$out/mosquitto-db.conf" <<EOF
listener 18872 127.0.0.1
allow_anonymous true
persistence true
persistence_location $out/mosquitto-db/
autosave_interval 1800
log_dest none
max_keepalive 65535
max_queued_messages 10000000
EOF
mkdir -p "$out/mosquitto-db"
pb="$top/.venv/bin/polybroker serve --listen mqtt://127.0.0.1:{port}"
brokers=(
  "polybroker@4=$pb --config $top/config/bench.toml --data-dir $out/data-{port}-\$RANDOM"
  "polybroker-mem@4=$pb --config $out/polybroker-mem.toml"
  # a fresh database per run (the sh execs mosquitto, so the PID measured is mosquitto's)
  "mosquitto-db=sh -c 'rm -rf $out/mosquitto-db/*; exec mosquitto -c $out/mosquitto-db.conf'"
  mosquitto
)
printf 'broker: %s\n' "${brokers[@]}"
MQTTLOAD_PERSISTENT_SUBS=1 "$work/run.sh" -r "$repeats" -s qos1 -o "$out/throughput" "${brokers[@]}"

sessions=${size%x*} messages=${size#*x}
echo "restart and disk: $sessions sessions x $messages messages"
"$top/.venv/bin/python" "$top/interop/bench/durable_store.py" \
  --sessions "$sessions" --messages "$messages" | tee "$out/store.json"
echo "results: $out/throughput/results.jsonl, $out/throughput/report.md, $out/store.json"
