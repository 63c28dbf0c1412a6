# Sourced by gpu_check.sh and gpu_ray_check.sh: run prepared checks one step at a time.
#
# step NAME LIMIT_S CMD...: run CMD under `timeout LIMIT_S` (capped by what is left of TOTAL_S
# when the caller sets it; under 10 s left, the step is skipped), record its verdict, return
# code and duration in RESULTS (text lines) and STATUS_JSON (JSON objects), count failures in
# FAILED, and never abort the script.
# record NAME VERDICT [JSON_VERDICT]: a line for a step that did not run (and counts FAILED
# when JSON_VERDICT is FAILED).
# Settings: STEP_WIDTH (name column, default 28), STEP_KILL_AFTER (seconds after the limit's
# SIGTERM before SIGKILL, default 10), TOTAL_S and T_START (optional whole-run budget).

RESULTS=()
STATUS_JSON=()
FAILED=0
T_START=$(date +%s)

record() {
  local name=$1 verdict=$2 json=${3:-skipped}
  RESULTS+=("$(printf "%-${STEP_WIDTH:-28}s %-10s" "$name" "$verdict")")
  STATUS_JSON+=("{\"step\": \"$name\", \"verdict\": \"$json\"}")
  [ "$json" != FAILED ] || FAILED=$((FAILED + 1))
}

step() {
  local name=$1 limit=$2
  shift 2
  echo
  if [ -n "${TOTAL_S:-}" ]; then
    local left=$((TOTAL_S - ($(date +%s) - T_START)))
    [ "$limit" -le "$left" ] || limit=$left
    if [ "$limit" -lt 10 ]; then
      echo "=== [$name] SKIPPED: ${left}s left of the ${TOTAL_S}s budget"
      record "$name" SKIPPED
      FAILED=$((FAILED + 1))
      return 0
    fi
  fi
  local shown="$*"
  shown="${shown//$'\n'/ }"
  [ "${#shown}" -le 200 ] || shown="${shown:0:200}..."
  echo "=== [$name] $(date +%H:%M:%S) (limit ${limit}s): $shown"
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after="${STEP_KILL_AFTER:-10}" "$limit" "$@"
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local verdict=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then verdict="TIMED OUT"; elif [ "$rc" -ne 0 ]; then verdict="FAILED"; fi
  [ "$verdict" = ok ] || FAILED=$((FAILED + 1))
  RESULTS+=("$(printf "%-${STEP_WIDTH:-28}s %-10s rc=%-4s %4ss" "$name" "$verdict" "$rc" "$dt")")
  STATUS_JSON+=("{\"step\": \"$name\", \"verdict\": \"$verdict\", \"rc\": $rc, \"seconds\": $dt}")
  echo "=== [$name] $verdict (rc=$rc, ${dt}s)"
  return 0
}
