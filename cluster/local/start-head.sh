#!/usr/bin/env bash
# Start a single-machine Ray head for vlalign, bound to loopback only (GCS, raylet, dashboard).
#
#   cluster/local/start-head.sh [--port 6379] [--dashboard-port 8265] [--num-cpus N]
#                               [--temp-dir /tmp/vlalign-ray] [--no-auth]
#
# Ray rewrites 127.0.0.1 to the machine's network address unless local-only mode is on
# (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), so this script turns it on: every Ray service then
# listens on 127.0.0.1. Token authentication (Ray >= 2.52) stays on unless --no-auth: the token
# is read from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, and generated when none
# exists. Stop this head (and only this head) with cluster/local/stop-head.sh --temp-dir DIR.
set -euo pipefail

PORT=6379
DASHBOARD_PORT=8265
TEMP_DIR=/tmp/vlalign-ray
NUM_CPUS=""
AUTH=token
RAY_BIN=${RAY_BIN:-ray}

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) PORT=$2; shift 2 ;;
    --dashboard-port) DASHBOARD_PORT=$2; shift 2 ;;
    --num-cpus) NUM_CPUS=$2; shift 2 ;;
    --temp-dir) TEMP_DIR=$2; shift 2 ;;
    --no-auth) AUTH=disabled; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "start-head.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

case "$TEMP_DIR" in /*) ;; *) echo "start-head.sh: --temp-dir must be absolute" >&2; exit 2 ;; esac
if ! command -v "$RAY_BIN" >/dev/null 2>&1; then
  echo "start-head.sh: '$RAY_BIN' not found (activate the vlalign venv or set RAY_BIN)" >&2
  exit 2
fi

# More logical CPUs than cores: on a 2-core machine two 1-CPU training workers would otherwise
# leave nothing for Ray Data read tasks (see ENVIRONMENT.md).
if [[ -z "$NUM_CPUS" ]]; then
  cores=$(nproc 2>/dev/null || echo 2)
  NUM_CPUS=$(( cores < 4 ? 4 : cores ))
fi

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0   # local-only: keep 127.0.0.1 as the node address
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-$AUTH}

if [[ "$RAY_AUTH_MODE" == token && -z "${RAY_AUTH_TOKEN:-}" ]]; then
  token_file=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
  if [[ ! -s "$token_file" ]]; then
    mkdir -p "$(dirname "$token_file")"
    (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$token_file")
    echo "generated a Ray auth token in $token_file"
  fi
fi

mkdir -p "$TEMP_DIR"
"$RAY_BIN" start --head \
  --node-ip-address 127.0.0.1 \
  --port "$PORT" \
  --dashboard-host 127.0.0.1 \
  --dashboard-port "$DASHBOARD_PORT" \
  --include-dashboard true \
  --num-cpus "$NUM_CPUS" \
  --temp-dir "$TEMP_DIR" \
  --disable-usage-stats >"$TEMP_DIR/start-head.log" 2>&1 || {
    echo "start-head.sh: ray start failed; its output:" >&2
    cat "$TEMP_DIR/start-head.log" >&2
    exit 1
  }

# What stop-head.sh needs to find this head's processes (and nothing else).
cat > "$TEMP_DIR/vlalign-head.env" <<STATE
PORT=$PORT
DASHBOARD_PORT=$DASHBOARD_PORT
TEMP_DIR=$TEMP_DIR
RAY_AUTH_MODE=$RAY_AUTH_MODE
STATE

cat <<MSG
Ray head started (loopback only, auth: $RAY_AUTH_MODE, $NUM_CPUS logical CPUs)
  GCS address:  127.0.0.1:$PORT
  dashboard:    http://127.0.0.1:$DASHBOARD_PORT
Submit a recipe as a Ray job:
  vlalign submit recipes/tiny/dpo.yaml --address http://127.0.0.1:$DASHBOARD_PORT --follow
Run a recipe from this shell on this head:
  vlalign run recipes/tiny/dpo.yaml --address 127.0.0.1:$PORT
(other Ray drivers need the same modes as the head first:
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=$RAY_AUTH_MODE)
Stop it:
  cluster/local/stop-head.sh --temp-dir $TEMP_DIR
MSG
