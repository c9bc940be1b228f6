#!/usr/bin/env bash
# A multi-host Sura inference cluster on one machine: every node gets a network namespace of its
# own, joined by veth pairs to a bridge, on a private /24 that exists only inside namespaces this
# script creates. Nothing is added to the root namespace; every namespace (and with it every link
# and address) is deleted when the script exits. Needs root (ip netns) and iproute2.
#
#   sudo cluster/netns-cluster.sh [--workers N] [--executor null|pipeline] [--subnet 10.213.0]
#                                 [--duration SECONDS] [--check] [--logs DIR] [--sura PATH]
#
# Topology (X = the script's pid, so two runs never share names):
#   sura-X-sw      bridge br0 (the switch)
#   sura-X-sched   eth0 SUBNET.1      sura serve: front end :5555, back end :5556, HTTP :8080
#   sura-X-wK      eth0 SUBNET.(10+K) sura worker --scheduler tcp://SUBNET.1:5556
# --check: wait until every worker has registered, send one generation request through the HTTP
# API from the scheduler's namespace, print the result and stop (exit status 0 when both worked).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

workers=2
executor=null
subnet=10.213.0
duration=0
check=0
logs=""
sura="${SURA:-}"
usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers="$2"; shift 2 ;;
    --executor) executor="$2"; shift 2 ;;
    --subnet) subnet="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --check) check=1; shift ;;
    --logs) logs="$2"; shift 2 ;;
    --sura) sura="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "netns-cluster: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case "$workers" in ''|*[!0-9]*) echo "netns-cluster: --workers must be a whole number, got '$workers'" >&2; exit 2 ;; esac
if [ "$workers" -lt 1 ] || [ "$workers" -gt 200 ]; then echo "netns-cluster: --workers must be 1…200" >&2; exit 2; fi
# Only private ranges: the addresses never leave the namespaces, but they must not shadow real ones.
if ! [[ "$subnet" =~ ^(10\.[0-9]{1,3}\.[0-9]{1,3}|192\.168\.[0-9]{1,3})$ ]]; then
  echo "netns-cluster: --subnet must be the first three octets of a private /24 (10.A.B or 192.168.C), got '$subnet'" >&2
  exit 2
fi
case "$duration" in ''|*[!0-9.]*) echo "netns-cluster: --duration must be seconds, got '$duration'" >&2; exit 2 ;; esac
if [ "$(id -u)" -ne 0 ]; then echo "netns-cluster: network namespaces need root; run it with sudo" >&2; exit 1; fi
command -v ip >/dev/null || { echo "netns-cluster: 'ip' (iproute2) is not installed" >&2; exit 1; }

if [ -z "$sura" ]; then
  for candidate in "$repo/.build/release/sura" "$repo/.build/debug/sura"; do
    if [ -x "$candidate" ]; then sura="$candidate"; break; fi
  done
fi
[ -n "$sura" ] || sura="$(command -v sura || true)"
if [ -z "$sura" ] || [ ! -x "$sura" ]; then
  echo "netns-cluster: no sura executable; build one with 'swift build -c release' or pass --sura PATH" >&2
  exit 1
fi
[ -n "$logs" ] || logs="$(mktemp -d "${TMPDIR:-/tmp}/sura-netns-cluster.XXXXXX")"
mkdir -p "$logs"

prefix="sura-$$"
switch="$prefix-sw"
scheduler_ns="$prefix-sched"
scheduler_ip="$subnet.1"
namespaces=()
pids=()
stopping=0
tear_down() {
  [ "$stopping" = 1 ] && return
  stopping=1
  # A second Ctrl-C must not cut the clean-up short; it is bounded by the waits below.
  trap '' INT TERM
  if [ ${#pids[@]} -gt 0 ]; then
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
  # Only the namespaces this run created; deleting one removes its links and addresses.
  for ((i = ${#namespaces[@]} - 1; i >= 0; i--)); do ip netns delete "${namespaces[$i]}" 2>/dev/null || true; done
  echo "netns-cluster: removed ${#namespaces[@]} namespace(s); logs in $logs"
}
trap tear_down EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

make_namespace() {
  ip netns add "$1"
  namespaces+=("$1")
  ip -n "$1" link set lo up
}

# attach NAMESPACE ADDRESS PORT: a veth pair with eth0 in NAMESPACE and PORT on the bridge.
attach() {
  ip -n "$1" link add eth0 type veth peer name "$3" netns "$switch"
  ip -n "$switch" link set "$3" master br0 up
  ip -n "$1" addr add "$2/24" dev eth0
  ip -n "$1" link set eth0 up
}

make_namespace "$switch"
ip -n "$switch" link add br0 type bridge
ip -n "$switch" link set br0 up
make_namespace "$scheduler_ns"
attach "$scheduler_ns" "$scheduler_ip" p0
for k in $(seq 1 "$workers"); do
  make_namespace "$prefix-w$k"
  attach "$prefix-w$k" "$subnet.$((10 + k))" "p$k"
done
echo "netns-cluster: ${#namespaces[@]} namespaces on $subnet.0/24 (scheduler $scheduler_ip, workers $subnet.11…$subnet.$((10 + workers)))"

ip netns exec "$scheduler_ns" "$sura" serve --frontend "tcp://$scheduler_ip:5555" --backend "tcp://$scheduler_ip:5556" \
  --http-host "$scheduler_ip" --http-port 8080 >"$logs/scheduler.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 300); do
  grep -q '^sura serve:' "$logs/scheduler.log" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "netns-cluster: the scheduler exited at start:" >&2; tail -n 20 "$logs/scheduler.log" >&2; exit 1; }
  sleep 0.1
done
grep -q '^sura serve:' "$logs/scheduler.log" || { echo "netns-cluster: the scheduler did not start in 30 s" >&2; exit 1; }

for k in $(seq 1 "$workers"); do
  ip netns exec "$prefix-w$k" "$sura" worker --scheduler "tcp://$scheduler_ip:5556" --executor "$executor" \
    --name "netns-w$k" >"$logs/worker-$k.log" 2>&1 &
  pids+=("$!")
done

# From the scheduler's namespace: the only place its address is reachable from.
in_scheduler() { ip netns exec "$scheduler_ns" "$@"; }
health="http://$scheduler_ip:8080/healthz"
registered=0
if command -v curl >/dev/null; then
  for _ in $(seq 1 200); do
    if in_scheduler curl -fsS --max-time 2 "$health" 2>/dev/null | grep -q "\"workers\":$workers[,}]"; then registered=1; break; fi
    sleep 0.1
  done
  echo "netns-cluster: $(in_scheduler curl -sS --max-time 2 "$health" 2>/dev/null || echo 'health check unanswered')"
else
  echo "netns-cluster: curl is not installed; not checking registration"
fi

if [ "$check" = 1 ]; then
  command -v curl >/dev/null || { echo "netns-cluster: --check needs curl" >&2; exit 1; }
  [ "$registered" = 1 ] || { echo "netns-cluster: not every worker registered; see $logs" >&2; exit 1; }
  reply="$(in_scheduler curl -sS --max-time 30 -H 'Content-Type: application/json' \
    -d '{"prompt": "a red sneaker next to a bag", "n": 2, "seed": 1}' "http://$scheduler_ip:8080/v1/images/generations" || true)"
  images="$(printf '%s' "$reply" | grep -o '"b64_json"' | wc -l)"
  if [ "$images" -ge 2 ]; then
    echo "netns-cluster: check passed: $workers worker(s) registered across namespaces, a request returned $images images"
    exit 0
  fi
  echo "netns-cluster: check failed: the generation request answered: ${reply:0:300}" >&2
  exit 1
fi

echo "netns-cluster: HTTP API at http://$scheduler_ip:8080/ inside namespace $scheduler_ns, e.g."
echo "  sudo ip netns exec $scheduler_ns curl -s http://$scheduler_ip:8080/v1/status"
if [ "$duration" != 0 ]; then
  sleep "$duration" &
  wait $! || true
else
  echo "netns-cluster: Ctrl-C to stop"
  wait "${pids[0]}" || true
  echo "netns-cluster: the scheduler exited"
fi
