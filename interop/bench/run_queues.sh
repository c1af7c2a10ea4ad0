#!/usr/bin/env bash
# Runs the STOMP 1.2 and AMQP 0-9-1 rows against polybroker and RabbitMQ (with its STOMP
# plugin), interleaved in one run, and prints the ratio table (medians over the repeats),
# then measures the data directory's fsync latency.
#
#   interop/bench/run_queues.sh [-r REPEATS] [-s "ROWS"] [-o OUTDIR]
#
# Rows (all: 1 publisher, 64-byte bodies; --window 1000 messages published but not yet
# delivered to every consumer, the same closed loop for both brokers):
#   stomp_queue     SEND -> /queue/NAME -> 1 consumer, ack:client-individual, prefetch-count 100
#   stomp_fanout    SEND -> /topic/NAME -> 100 subscribers (ack auto), deliveries/s
#   amqp_queue      basic.publish -> queue -> 1 consumer, basic.ack each, basic.qos 100
#   amqp_fanout     basic.publish to amq.topic -> 100 server-named queues, one consumer each (no-ack)
#   stomp_durable   SEND persistent:true with a receipt each, 16 receipts awaited at most,
#                   -> /queue -> 1 consumer with client-individual acks
#   amqp_durable    persistent publishes to a durable queue, pipelined confirms (16 awaited at
#                   most) -> 1 consumer with basic.ack
#   amqp_confirm1   persistent publishes to a durable queue, each waiting for its confirm,
#                   no consumer: the confirmed rate
# Every row starts each broker fresh with an empty data directory: polybroker with
# config/bench.toml (its queue bounds raised to 10M messages; RabbitMQ's queues are
# unbounded); RabbitMQ 3.10 from Debian (installed here when missing) runs as the current
# user in a temporary directory with its own node name, epmd port and free ports.
#
# Needs cc, jq and python3; polybroker runs from this checkout's .venv.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
here=$top/interop/bench
repeats=3
rows="stomp_queue stomp_fanout amqp_queue amqp_fanout stomp_durable amqp_durable amqp_confirm1"
out=/tmp/polybroker-queues-$(date +%Y%m%d-%H%M%S)
while getopts "r:s:o:" opt; do
  case $opt in r) repeats=$OPTARG;; s) rows=$OPTARG;; o) out=$OPTARG;; *) exit 2;; esac
done
missing=""
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing="$missing rabbitmq-server"
command -v jq >/dev/null || missing="$missing jq"
if [ -n "$missing" ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi
# Debian's package starts a system node where systemd runs; this script runs its own.
[ -x "$top/.venv/bin/polybroker" ] || make -C "$top" .venv/.installed
mkdir -p "$out"
res=$out/results.jsonl
gen=$out/mqload
cc -O2 -Wall -o "$gen" "$here/mqload.c"
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # port pid: up to 60 s for the port to accept
  for _ in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

BPID="" BROOT="" STOMP_PORT="" AMQP_PORT=""
start_polybroker() {
  BROOT=$(mktemp -d -p "$out" polybroker-XXXXXX)
  STOMP_PORT=$(free_port) AMQP_PORT=$(free_port)
  "$top/.venv/bin/polybroker" serve --config "$top/config/bench.toml" --data-dir "$BROOT/data" \
    --listen "stomp://127.0.0.1:$STOMP_PORT" --listen "amqp://127.0.0.1:$AMQP_PORT" >>"$out/polybroker.log" 2>&1 &
  BPID=$!
  wait_port "$STOMP_PORT" "$BPID" && wait_port "$AMQP_PORT" "$BPID"
}

# RabbitMQ's environment: everything under $BROOT, the node and epmd of its own.
rabbit_env() {
  export HOME=$BROOT RABBITMQ_NODENAME=pbbench$$@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT=$AMQP_PORT RABBITMQ_DIST_PORT=$DIST_PORT ERL_EPMD_PORT=$EPMD_PORT \
    RABBITMQ_MNESIA_BASE=$BROOT/mnesia RABBITMQ_LOG_BASE=$BROOT/log RABBITMQ_LOGS=$BROOT/log/rabbit.log \
    RABBITMQ_ENABLED_PLUGINS_FILE=$BROOT/enabled_plugins RABBITMQ_CONFIG_FILE=$BROOT/rabbitmq \
    RABBITMQ_PID_FILE=$BROOT/rabbit.pid RABBITMQ_CONF_ENV_FILE=$BROOT/rabbitmq-env.conf \
    RABBITMQ_PLUGINS_EXPAND_DIR=$BROOT/plugins-expand
}
start_rabbitmq() {
  BROOT=$(mktemp -d -p "$out" rabbitmq-XXXXXX)
  STOMP_PORT=$(free_port) AMQP_PORT=$(free_port) DIST_PORT=$(free_port) EPMD_PORT=$(free_port)
  echo "[rabbitmq_stomp]." >"$BROOT/enabled_plugins"
  touch "$BROOT/rabbitmq-env.conf"
  printf 'stomp.listeners.tcp.1 = 127.0.0.1:%s\nlisteners.tcp.1 = 127.0.0.1:%s\n' "$STOMP_PORT" "$AMQP_PORT" \
    >"$BROOT/rabbitmq.conf"
  # its own epmd, started here so that it is stopped by its PID with the node
  (rabbit_env; exec epmd -port "$EPMD_PORT") >>"$out/rabbitmq.log" 2>&1 &
  EPID=$!
  (rabbit_env; exec /usr/lib/rabbitmq/bin/rabbitmq-server) >>"$out/rabbitmq.log" 2>&1 &
  BPID=$!
  wait_port "$STOMP_PORT" "$BPID" && wait_port "$AMQP_PORT" "$BPID" || return 1
  # the Erlang VM (beam.smp) is the broker whose CPU time is read
  for _ in $(seq 1 100); do [ -s "$BROOT/rabbit.pid" ] && break; sleep 0.1; done
  RPID=$(cat "$BROOT/rabbit.pid")
}

stop_broker() {
  # RabbitMQ: its start script waits for the Erlang VM (started before the pid file is
  # written), which stops cleanly on SIGTERM
  if [ -n "$EPID" ] && [ -z "$RPID" ]; then RPID=$(pgrep -P "$BPID" -x beam.smp || true); fi
  if [ -n "$RPID" ]; then
    kill -TERM "$RPID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$RPID" 2>/dev/null || break; sleep 0.1; done
  fi
  kill -TERM "$BPID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$BPID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$BPID" 2>/dev/null || true
  [ -z "$RPID" ] || kill -KILL "$RPID" 2>/dev/null || true
  wait "$BPID" 2>/dev/null || true
  if [ -n "$EPID" ]; then kill -TERM "$EPID" 2>/dev/null || true; wait "$EPID" 2>/dev/null || true; fi
  BPID="" RPID="" EPID=""
}
cleanup() { [ -z "$BPID" ] || stop_broker; }
RPID="" EPID=""
trap cleanup EXIT
trap 'exit 130' INT TERM

row_args() { # row: generator arguments, the protocol first
  case $1 in
    stomp_queue)   echo "stomp --dest bench-q --ack --prefetch 100 --count 200000" ;;
    stomp_fanout)  echo "stomp --topic --dest bench --subs 100 --count 20000" ;;
    amqp_queue)    echo "amqp --dest bench-q --ack --prefetch 100 --count 200000" ;;
    amqp_fanout)   echo "amqp --topic --dest bench --subs 100 --count 20000" ;;
    stomp_durable) echo "stomp --dest bench-d --persistent --confirms 16 --ack --prefetch 100 --count 50000" ;;
    amqp_durable)  echo "amqp --dest bench-d --durable --persistent --confirms 16 --ack --prefetch 100 --count 50000" ;;
    amqp_confirm1) echo "amqp --dest bench-c --durable --persistent --confirms 1 --no-sub --count 20000" ;;
    *) return 1 ;;
  esac
}

echo "results -> $res"
t0=$(date +%s)
for r in $(seq 1 "$repeats"); do
  for row in $rows; do
    args=$(row_args "$row") || { echo "unknown row $row" >&2; exit 2; }
    for name in polybroker rabbitmq; do
      if ! "start_$name"; then
        echo "{\"case\":\"$row\",\"broker\":\"$name\",\"repeat\":$r,\"error\":\"broker start failed\"}" >>"$res"
        stop_broker; continue
      fi
      port=$STOMP_PORT; [ "${args%% *}" = amqp ] && port=$AMQP_PORT
      rc=0
      line=$(timeout 120 "$gen" $args --duration 8 --drain 10 --port "$port" --broker-pid "${RPID:-$BPID}" \
        --label "$name" --mode "$row" 2>>"$out/gen.log") || rc=$?
      stop_broker
      [ -n "$line" ] || line="{\"error\":\"generator rc=$rc, no output\"}"
      [ "$rc" = 0 ] || line=$(echo "$line" | jq -c --arg rc "$rc" '. + {error: (.error // ("generator rc=" + $rc))}')
      echo "$line" | jq -c --arg row "$row" --arg b "$name" --argjson r "$r" --arg args "$args" \
        '. + {case: $row, broker: $b, repeat: $r, args: $args}' >>"$res"
      tail -1 "$out/gen.log" | sed "s/^/  r$r $row: /"
    done
  done
done
echo "total wall time: $(( $(date +%s) - t0 )) s"
python3 "$here/fsync_latency.py" "$out" | tee "$out/fsync.txt"
python3 "$here/report_queues.py" "$res" | tee "$out/report.md"
echo "results: $res, table: $out/report.md"
