#!/usr/bin/env bash
# Stop the Ray head that cluster/local/start-head.sh started, and only that one.
#
#   cluster/local/stop-head.sh [--temp-dir /tmp/vlalign-ray] [--grace 10]
#
# `ray stop` ends every Ray process of every cluster on the machine. This script instead finds
# the processes of one head: those whose command line names its session folder
# (TEMP_DIR/session_*), Ray's client server for its GCS port, and all their descendants
# (dashboard modules, agents, workers, jobs). It sends SIGTERM, waits --grace seconds, then
# SIGKILLs what is left, and removes the head's ray_current_cluster file.
set -euo pipefail

TEMP_DIR=/tmp/vlalign-ray
GRACE=10

while [[ $# -gt 0 ]]; do
  case "$1" in
    --temp-dir) TEMP_DIR=$2; shift 2 ;;
    --grace) GRACE=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "stop-head.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

STATE="$TEMP_DIR/vlalign-head.env"
if [[ ! -f "$STATE" ]]; then
  echo "stop-head.sh: no head started by start-head.sh under $TEMP_DIR ($STATE missing)" >&2
  exit 1
fi
PORT=$(sed -n 's/^PORT=//p' "$STATE")

descendants() {
  local child
  for child in $(pgrep -P "$1" || true); do
    echo "$child"
    descendants "$child"
  done
}

roots=$( { pgrep -f -- "$TEMP_DIR/session_" || true; pgrep -f -- "--address=[^ ]*:${PORT}( |$)" || true; } | sort -u )
pids=$( for r in $roots; do echo "$r"; descendants "$r"; done | sort -un | grep -vx "$$" || true )

if [[ -z "$pids" ]]; then
  echo "no processes of the head under $TEMP_DIR are running"
else
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  alive=$pids
  for _ in $(seq "$GRACE"); do
    alive=""
    for p in $pids; do
      if [[ -d /proc/$p ]] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null; then alive+=" $p"; fi
    done
    [[ -z "$alive" ]] && break
    sleep 1
  done
  if [[ -n "${alive:-}" ]]; then
    # shellcheck disable=SC2086
    kill -KILL $alive 2>/dev/null || true
  fi
  echo "stopped the Ray head under $TEMP_DIR ($(echo $pids | wc -w) processes)"
fi
rm -f "$TEMP_DIR/ray_current_cluster" "$STATE"
