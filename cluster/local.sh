#!/usr/bin/env bash
# A multi-node Ray cluster on this machine (or workers joining a head elsewhere),
# with token authentication and the dashboard/job server bound to 127.0.0.1.
#
#   cluster/local.sh start [--workers N] [--port P] [--dashboard-port P] [--temp-dir D]
#                          [--num-cpus C] [--num-gpus G] [--object-store-memory BYTES]
#                          [--node-ip-address IP] [--head-address HOST:PORT]
#                          [--token-file FILE] [--state-dir S]
#   cluster/local.sh stop   [--state-dir S]
#   cluster/local.sh status [--state-dir S]
#
# Every node is one `ray start --block` in its own session; its pid is recorded in
# the state folder (default ~/.distmeta/local-cluster, or $DISTMETA_CLUSTER_DIR),
# and `stop` ends exactly those sessions by pid. It never runs `ray stop`, which
# would kill every Ray on the machine.
#
# After `start`:  source <state-dir>/env.sh   (sets RAY_ADDRESS, RAY_API_SERVER_ADDRESS,
# RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH), then
#   distmeta train experiments/x.yaml --address auto --workers 4
#   distmeta submit --follow -- train experiments/x.yaml
set -euo pipefail

die() { echo "local.sh: error: $*" >&2; exit 2; }
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

STATE_DIR="${DISTMETA_CLUSTER_DIR:-$HOME/.distmeta/local-cluster}"
RAY_BIN="${RAY_BIN:-$(command -v ray || true)}"
PYTHON="${PYTHON:-}"

resolve_tools() {
  [ -n "$RAY_BIN" ] && [ -x "$RAY_BIN" ] || die "no 'ray' on PATH (activate the environment, or set RAY_BIN)"
  if [ -z "$PYTHON" ]; then
    if [ -x "$(dirname "$RAY_BIN")/python" ]; then PYTHON="$(dirname "$RAY_BIN")/python"; else PYTHON=python3; fi
  fi
}

free_port() {
  "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_in_use() {  # port_in_use HOST PORT
  "$PYTHON" - "$1" "$2" <<'EOF'
import socket, sys
s = socket.socket()
s.settimeout(1)
sys.exit(0 if s.connect_ex((sys.argv[1], int(sys.argv[2]))) == 0 else 1)
EOF
}

# Processes of a session (a node), restricted to Ray's own: a recycled pid that
# now belongs to something else is never touched.
session_pids() {
  local sid="$1"
  ps -s "$sid" -o pid=,stat=,args= 2>/dev/null | awk '$2 !~ /^Z/ && /ray|raylet|gcs_server/ {print $1}' || true
}

node_alive() { [ -n "$(session_pids "$1")" ]; }

stop_session() {  # stop_session SID NAME
  local sid="$1" name="$2" pids
  pids="$(session_pids "$sid")"
  if [ -z "$pids" ]; then echo "$name (pid $sid): not running"; return 0; fi
  # SIGTERM first; Ray's gcs_server, monitor and `ray start --block` may ignore it,
  # so what is left after a few seconds gets SIGKILL.
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 1 20); do
    [ -z "$(session_pids "$sid")" ] && { echo "$name (pid $sid): stopped"; return 0; }
    sleep 0.2
  done
  pids="$(session_pids "$sid")"
  # shellcheck disable=SC2086
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
  sleep 0.5
  echo "$name (pid $sid): killed"
}

# Start one node: `ray start --block` in a new session whose id is its pid.
start_node() {  # start_node NAME ARGS...
  local name="$1"; shift
  setsid "$RAY_BIN" start --block "$@" >"$STATE_DIR/$name.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$STATE_DIR/$name.pid"
}

wait_started() {  # wait_started NAME TIMEOUT_S
  local name="$1" timeout="$2" pid
  pid="$(cat "$STATE_DIR/$name.pid")"
  for _ in $(seq 1 $((timeout * 2))); do
    if grep -q "Ray runtime started" "$STATE_DIR/$name.log" 2>/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$STATE_DIR/$name.log" >&2 || true
      die "$name exited during start (log: $STATE_DIR/$name.log)"
    fi
    sleep 0.5
  done
  tail -n 30 "$STATE_DIR/$name.log" >&2 || true
  die "$name did not start within ${timeout}s (log: $STATE_DIR/$name.log)"
}

cmd_start() {
  local workers=1 port="" dashboard_port="" temp_dir="" num_cpus="" num_gpus="" osm=""
  local node_ip="127.0.0.1" head_address="" token_file=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --workers) workers="$2"; shift 2 ;;
      --port) port="$2"; shift 2 ;;
      --dashboard-port) dashboard_port="$2"; shift 2 ;;
      --temp-dir) temp_dir="$2"; shift 2 ;;
      --num-cpus) num_cpus="$2"; shift 2 ;;
      --num-gpus) num_gpus="$2"; shift 2 ;;
      --object-store-memory) osm="$2"; shift 2 ;;
      --node-ip-address) node_ip="$2"; shift 2 ;;
      --head-address) head_address="$2"; shift 2 ;;
      --token-file) token_file="$2"; shift 2 ;;
      --state-dir) STATE_DIR="$2"; shift 2 ;;
      -h|--help) usage; exit 0 ;;
      *) die "start: unknown option $1 (see --help)" ;;
    esac
  done
  [[ "$workers" =~ ^[0-9]+$ ]] || die "--workers: expected a number, got '$workers'"
  resolve_tools
  mkdir -p "$STATE_DIR"
  chmod 700 "$STATE_DIR"
  for f in "$STATE_DIR"/*.pid; do
    [ -e "$f" ] || continue
    node_alive "$(cat "$f")" && die "a cluster from $STATE_DIR is running: cluster/local.sh stop --state-dir $STATE_DIR"
    rm -f "$f"
  done

  # The token: given, or generated once (Ray's format: 64 hex characters).
  if [ -n "$token_file" ]; then
    [ -s "$token_file" ] || die "--token-file $token_file: missing or empty"
    cp "$token_file" "$STATE_DIR/token"
  elif [ -n "$head_address" ]; then
    die "--head-address needs --token-file (the head's token)"
  elif [ ! -s "$STATE_DIR/token" ]; then
    "$PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$STATE_DIR/token"
  fi
  chmod 600 "$STATE_DIR/token"

  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE_DIR/token"
  unset RAY_AUTH_TOKEN RAY_ADDRESS RAY_API_SERVER_ADDRESS
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  [ -n "$temp_dir" ] || temp_dir="/tmp/dm_cluster_$(id -u)"
  local common=(--temp-dir "$temp_dir" --disable-usage-stats)
  [ -n "$num_cpus" ] && common+=(--num-cpus "$num_cpus")
  [ -n "$num_gpus" ] && common+=(--num-gpus "$num_gpus")
  [ -n "$osm" ] && common+=(--object-store-memory "$osm")

  local gcs_address dashboard=""
  if [ -z "$head_address" ]; then
    [ -n "$port" ] || port="$(free_port)"
    [ -n "$dashboard_port" ] || dashboard_port=8265
    port_in_use 127.0.0.1 "$port" && die "--port $port is in use"
    if port_in_use 127.0.0.1 "$dashboard_port"; then
      [ "$dashboard_port" = 8265 ] || die "--dashboard-port $dashboard_port is in use"
      dashboard_port="$(free_port)"
      echo "local.sh: port 8265 is in use; the dashboard uses $dashboard_port" >&2
    fi
    start_node head --head --port "$port" --node-ip-address "$node_ip" \
      --dashboard-host 127.0.0.1 --dashboard-port "$dashboard_port" \
      --ray-client-server-port "$(free_port)" --dashboard-agent-listen-port "$(free_port)" \
      "${common[@]}"
    wait_started head 120
    gcs_address="$node_ip:$port"
    dashboard="http://127.0.0.1:$dashboard_port"
  else
    gcs_address="$head_address"
  fi

  local i
  for i in $(seq 1 "$workers"); do
    start_node "worker-$i" --address "$gcs_address" --node-ip-address "$node_ip" \
      --dashboard-agent-listen-port "$(free_port)" "${common[@]}"
  done
  for i in $(seq 1 "$workers"); do wait_started "worker-$i" "${DISTMETA_NODE_START_TIMEOUT:-180}"; done

  {
    echo "# source this file to use the cluster started by cluster/local.sh"
    echo "export RAY_ADDRESS=$gcs_address"
    [ -n "$dashboard" ] && echo "export RAY_API_SERVER_ADDRESS=$dashboard"
    echo "export RAY_AUTH_MODE=token"
    echo "export RAY_AUTH_TOKEN_PATH=$STATE_DIR/token"
  } >"$STATE_DIR/env.sh"
  echo "$gcs_address" >"$STATE_DIR/address"
  [ -n "$dashboard" ] && echo "$dashboard" >"$STATE_DIR/dashboard"

  echo "cluster: $([ -z "$head_address" ] && echo "head + ")$workers worker node(s); state in $STATE_DIR"
  echo "  Ray address:     $gcs_address"
  [ -n "$dashboard" ] && echo "  dashboard / jobs: $dashboard (bound to 127.0.0.1)"
  echo "  token:           $STATE_DIR/token"
  echo "  use it:          source $STATE_DIR/env.sh"
}

node_files() {  # workers first, head last
  local f
  for f in "$STATE_DIR"/worker-*.pid "$STATE_DIR"/head.pid; do [ -e "$f" ] && echo "$f"; done
  return 0
}

cmd_stop() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --state-dir) STATE_DIR="$2"; shift 2 ;;
      -h|--help) usage; exit 0 ;;
      *) die "stop: unknown option $1" ;;
    esac
  done
  local files f
  files="$(node_files)"
  [ -n "$files" ] || { echo "no cluster recorded in $STATE_DIR"; return 0; }
  for f in $files; do
    stop_session "$(cat "$f")" "$(basename "$f" .pid)"
    rm -f "$f"
  done
  rm -f "$STATE_DIR/env.sh" "$STATE_DIR/address" "$STATE_DIR/dashboard"
}

cmd_status() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --state-dir) STATE_DIR="$2"; shift 2 ;;
      -h|--help) usage; exit 0 ;;
      *) die "status: unknown option $1" ;;
    esac
  done
  local files f sid running=0 total=0
  files="$(node_files)"
  [ -n "$files" ] || { echo "no cluster recorded in $STATE_DIR"; return 1; }
  for f in $files; do
    sid="$(cat "$f")"; total=$((total + 1))
    if node_alive "$sid"; then
      running=$((running + 1))
      echo "$(basename "$f" .pid) (pid $sid): running, $(session_pids "$sid" | wc -l) processes"
    else
      echo "$(basename "$f" .pid) (pid $sid): not running"
    fi
  done
  if [ -s "$STATE_DIR/dashboard" ]; then
    resolve_tools
    "$PYTHON" - "$(cat "$STATE_DIR/dashboard")" "$STATE_DIR/token" <<'EOF' || true
import json, sys, urllib.request
url, token_file = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url + "/api/v0/nodes?limit=1000",
                             headers={"Authorization": "Bearer " + open(token_file).read().strip()})
try:
    data = json.load(urllib.request.urlopen(req, timeout=5))
except Exception as exc:
    print(f"Ray nodes: job server at {url} not answering ({exc})")
    sys.exit(0)
def rows(obj):
    if isinstance(obj, list) and obj and all(isinstance(x, dict) and "state" in x for x in obj):
        return obj
    if isinstance(obj, dict):
        for v in obj.values():
            r = rows(v)
            if r:
                return r
    return []
nodes = rows(data)
alive = [n for n in nodes if n.get("state") == "ALIVE"]
print(f"Ray nodes: {len(alive)} alive of {len(nodes)} ({url})")
EOF
  fi
  [ "$running" -eq "$total" ]
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  status) cmd_status "$@" ;;
  -h|--help|help|"") usage ;;
  *) die "unknown command '$cmd' (start, stop, status)" ;;
esac
