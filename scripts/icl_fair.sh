#!/usr/bin/env bash
# Background training of the ICL "fair" preset (issue 21): one process per model, one thread each,
# at the lowest priority, surviving the shell that started it.
#
#   scripts/icl_fair.sh start [RUN ...]   start (or resume from its checkpoint) each run;
#                                         RUN is dense, sparse, dense+sparse or NAME@R (R-th further seed)
#   scripts/icl_fair.sh status            last log line of every run and whether it is running/paused
#   scripts/icl_fair.sh pause | resume    SIGSTOP / SIGCONT every running run (for benchmarks)
#   scripts/icl_fair.sh stop              SIGTERM: each run saves its checkpoint and exits
#
# Checkpoints: results/icl-<preset>/<run>/checkpoint.safetensors (+ snapshots/); logs and pid files
# in results/icl-<preset>/logs/. Starting a run that is already running does nothing.
# ICL_PRESET=fair-deep selects another preset (default fair).
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${ICL_PRESET:-fair}
ROOT=results/icl-$PRESET
LOGS=$ROOT/logs
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$LOGS"

pidfile() { echo "$LOGS/${1}.pid"; }
alive() { local f; f=$(pidfile "$1"); [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null; }
runs() { for f in "$LOGS"/*.pid; do [[ -e $f ]] && basename "$f" .pid; done; }

cmd=${1:-status}; shift || true
case $cmd in
  start)
    [[ $# -gt 0 ]] || set -- dense sparse dense+sparse
    for run in "$@"; do
      if alive "$run"; then echo "$run: already running (pid $(cat "$(pidfile "$run")"))"; continue; fi
      OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 setsid nohup nice -n 19 "$PY" -m platonic_fast icl train --preset "$PRESET" \
        --model "$run" --threads 1 --no-progress >>"$LOGS/$run.log" 2>&1 < /dev/null &
      echo $! >"$(pidfile "$run")"
      echo "$run: started (pid $!, log $LOGS/$run.log)"
    done ;;
  status)
    for run in $(runs); do
      state=stopped
      if alive "$run"; then
        state=$(ps -o stat= -p "$(cat "$(pidfile "$run")")" | grep -q T && echo paused || echo running)
      fi
      echo "$run [$state]: $(grep -a 'step ' "$LOGS/$run.log" | tail -n 1)"
    done ;;
  pause|resume|stop)
    sig=$([[ $cmd == pause ]] && echo STOP || ([[ $cmd == resume ]] && echo CONT || echo TERM))
    for run in $(runs); do
      if alive "$run"; then
        pid=$(cat "$(pidfile "$run")")
        # a paused process must be continued to act on SIGTERM
        [[ $sig == TERM ]] && kill -CONT "$pid"
        kill -"$sig" "$pid" && echo "$run: SIG$sig sent to $pid"
      fi
    done ;;
  *) sed -n 2,14p "$0"; exit 2 ;;
esac
