#!/usr/bin/env bash
# A Sura inference cluster on this machine: one scheduler (`sura serve`) and N workers
# (`sura worker`), each its own process, all on 127.0.0.1. Ctrl-C, SIGTERM, the end of
# --duration, or the scheduler exiting stops everything it started.
#
#   cluster/local-cluster.sh [--workers N] [--executor null|pipeline] [--port BASE] [--http-port P]
#                            [--duration SECONDS] [--logs DIR] [--sura PATH] [-- EXTRA SERVE ARGS…]
#
# Ports: BASE (front end, clients), BASE+1 (back end, workers), --http-port (HTTP API, /metrics).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

workers=2
executor=null
base=5555
http_port=8080
duration=0
logs=""
sura="${SURA:-}"
extra=()
usage() { sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers="$2"; shift 2 ;;
    --executor) executor="$2"; shift 2 ;;
    --port) base="$2"; shift 2 ;;
    --http-port) http_port="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --logs) logs="$2"; shift 2 ;;
    --sura) sura="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) echo "local-cluster: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case "$workers" in ''|*[!0-9]*) echo "local-cluster: --workers must be a whole number, got '$workers'" >&2; exit 2 ;; esac
case "$base$http_port" in *[!0-9]*) echo "local-cluster: ports must be numbers" >&2; exit 2 ;; esac
case "$duration" in ''|*[!0-9.]*) echo "local-cluster: --duration must be seconds, got '$duration'" >&2; exit 2 ;; esac

if [ -z "$sura" ]; then
  for candidate in "$repo/.build/release/sura" "$repo/.build/debug/sura"; do
    if [ -x "$candidate" ]; then sura="$candidate"; break; fi
  done
fi
[ -n "$sura" ] || sura="$(command -v sura || true)"
if [ -z "$sura" ] || [ ! -x "$sura" ]; then
  echo "local-cluster: no sura executable; build one with 'swift build -c release' or pass --sura PATH" >&2
  exit 1
fi
[ -n "$logs" ] || logs="$(mktemp -d "${TMPDIR:-/tmp}/sura-local-cluster.XXXXXX")"
mkdir -p "$logs"

pids=()
stopping=0
stop_all() {
  [ "$stopping" = 1 ] && return
  stopping=1
  # A second Ctrl-C must not cut the clean-up short; it is bounded by the waits below.
  trap '' INT TERM
  if [ ${#pids[@]} -gt 0 ]; then
    echo "local-cluster: stopping ${#pids[@]} process(es)"
    # Workers first (each finishes its batch and says BYE), then the scheduler (drains).
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
    for _ in $(seq 1 150); do
      alive=0
      for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
      [ "$alive" = 0 ] && break
      sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
  fi
  echo "local-cluster: stopped; logs in $logs"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

frontend="tcp://127.0.0.1:$base"
backend="tcp://127.0.0.1:$((base + 1))"
"$sura" serve --frontend "$frontend" --backend "$backend" --http-host 127.0.0.1 --http-port "$http_port" \
  ${extra[@]+"${extra[@]}"} >"$logs/scheduler.log" 2>&1 &
scheduler=$!
pids+=("$scheduler")

# The scheduler prints "sura serve: frontend=… backend=… http=…" once it is listening.
for _ in $(seq 1 300); do
  grep -q '^sura serve:' "$logs/scheduler.log" 2>/dev/null && break
  if ! kill -0 "$scheduler" 2>/dev/null; then
    echo "local-cluster: the scheduler exited at start:" >&2
    tail -n 20 "$logs/scheduler.log" >&2
    exit 1
  fi
  sleep 0.1
done
grep -q '^sura serve:' "$logs/scheduler.log" || { echo "local-cluster: the scheduler did not start in 30 s" >&2; exit 1; }

for i in $(seq 1 "$workers"); do
  "$sura" worker --scheduler "$backend" --executor "$executor" --name "local-$i" >"$logs/worker-$i.log" 2>&1 &
  pids+=("$!")
done

health="http://127.0.0.1:$http_port/healthz"
if command -v curl >/dev/null; then
  for _ in $(seq 1 100); do
    curl -fsS "$health" 2>/dev/null | grep -q "\"workers\":$workers[,}]" && break
    sleep 0.1
  done
  echo "local-cluster: $(curl -sS "$health" 2>/dev/null || echo 'health check unanswered')"
fi
echo "local-cluster: scheduler pid $scheduler ($frontend, workers on $backend, http://127.0.0.1:$http_port/), $workers worker(s), logs in $logs"

if [ "$duration" != 0 ]; then
  sleep "$duration" &
  wait $! || true
else
  echo "local-cluster: Ctrl-C to stop"
  wait "$scheduler" || true
  echo "local-cluster: the scheduler exited"
fi
