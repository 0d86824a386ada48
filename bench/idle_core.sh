#!/usr/bin/env bash
# Is the machine's idle core free? The bare endpoint and the bridge (worker off), each measured
# alone and then beside a busy loop at the lowest CPU priority (SCHED_IDLE, as serve's worker
# runs), alternated.  See bench/RESULTS.md, session 7.
#
#   bash bench/idle_core.sh          # BENCH_DURATION (default 12s), BENCH_ROUNDS (default 2)
#
# A busy loop under SCHED_IDLE shares nothing with the servers (no lock, file or socket) and
# runs only when no other task wants a CPU. If ingest still drops beside it, what serve's
# worker costs ingest is the CPU it uses, whatever it does with it. Needs wrk and chrt
# (util-linux); installs nothing.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DURATION=${BENCH_DURATION:-12s}
ROUNDS=${BENCH_ROUNDS:-2}
PORT=${BENCH_BRIDGE_PORT:-18181}
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=${BENCH_OUT:-bench/out/idle-core-$STAMP}
SECRET="bench-secret-$STAMP"
# shellcheck source=bench/lib.sh
. bench/lib.sh
need_tools wrk chrt
mkdir -p "$OUT"

serve() {  # serve bare|bridge: start a server on $PORT, its pid in SERVER
    if port_open "$PORT"; then
        echo "something already listens on port $PORT (set BENCH_BRIDGE_PORT)" >&2
        exit 1
    fi
    if [ "$1" = bare ]; then
        start_bare "$PORT" "$OUT/server.log"
        SERVER=$LAST_PID
    else
        rm -f "$OUT/bridge.db" "$OUT/bridge.db-wal" "$OUT/bridge.db-shm"
        env BRIDGE_DATABASE_URL="sqlite:///$OUT/bridge.db" BRIDGE_EMBEDDED_WORKER=false \
            BRIDGE_LOG_FORMAT=json BRIDGE_CLEVERTAP_WEBHOOK_SECRETS="$SECRET" \
            BRIDGE_DEDUP_WINDOW_SECONDS=3600 \
            "$PYTHON" -m app.cli serve --host 127.0.0.1 --port "$PORT" >>"$OUT/server.log" 2>&1 &
        SERVER=$!
        PIDS+=("$SERVER")
    fi
    wait_port "$PORT" "$SERVER" "$OUT/server.log"
}

measure() {  # measure bare|bridge alone|beside-busy-loop
    local burner="" name="$1-$2-$RANDOM"
    serve "$1"
    if [ "$2" = beside-busy-loop ]; then
        chrt -i 0 "$PYTHON" -c 'while True: pass' &
        burner=$!
        PIDS+=("$burner")
    fi
    wrk_campaign "$PORT" "warm-$name" "$OUT/warm.result" 3s >/dev/null
    wrk_campaign "$PORT" "$name" "$OUT/$name.result" "$DURATION" >"$OUT/$name.txt"
    if [ -n "$burner" ]; then
        kill "$burner"
        wait "$burner" 2>/dev/null || true
    fi
    kill "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    while port_open "$PORT"; do sleep 0.1; done
    printf '  %-7s %-17s %8s calls/s  p99 %6s ms\n' "$1" "$2" \
        "$(tr ' ' '\n' <"$OUT/$name.result" | sed -n 's/^ok_rps=//p')" \
        "$(tr ' ' '\n' <"$OUT/$name.result" | sed -n 's/^p99_ms=//p')"
}

echo "idle core check: wrk 32 connections, $DURATION per run, $ROUNDS rounds (output: $OUT)"
for _ in $(seq 1 "$ROUNDS"); do
    for server in bare bridge; do
        measure "$server" alone
        measure "$server" beside-busy-loop
    done
done
