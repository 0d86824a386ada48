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
for tool in wrk chrt; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$tool is not installed" >&2; exit 2; }
done
mkdir -p "$OUT"

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

serve() {  # serve bare|bridge: start a server on $PORT, its pid in SERVER
    if port_open; then
        echo "something already listens on port $PORT (set BENCH_BRIDGE_PORT)" >&2
        exit 1
    fi
    if [ "$1" = bare ]; then
        "$PYTHON" -m uvicorn bench.bare_app:app --host 127.0.0.1 --port "$PORT" --workers 1 \
            --loop uvloop --http httptools --no-access-log --log-level warning \
            >>"$OUT/server.log" 2>&1 &
    else
        rm -f "$OUT/bridge.db" "$OUT/bridge.db-wal" "$OUT/bridge.db-shm"
        env BRIDGE_DATABASE_URL="sqlite:///$OUT/bridge.db" BRIDGE_EMBEDDED_WORKER=false \
            BRIDGE_LOG_FORMAT=json BRIDGE_CLEVERTAP_WEBHOOK_SECRETS="$SECRET" \
            BRIDGE_DEDUP_WINDOW_SECONDS=3600 \
            "$PYTHON" -m app.cli serve --host 127.0.0.1 --port "$PORT" >>"$OUT/server.log" 2>&1 &
    fi
    SERVER=$!
    PIDS+=("$SERVER")
    for _ in $(seq 1 300); do
        port_open && return
        kill -0 "$SERVER" 2>/dev/null || break
        sleep 0.1
    done
    echo "no server on port $PORT; see $OUT/server.log" >&2
    exit 1
}

measure() {  # measure bare|bridge alone|beside-busy-loop
    local burner="" name="$1-$2-$RANDOM"
    serve "$1"
    if [ "$2" = beside-busy-loop ]; then
        chrt -i 0 "$PYTHON" -c 'while True: pass' &
        burner=$!
        PIDS+=("$burner")
    fi
    local env=(BENCH_AUTH=basic BENCH_SECRET="$SECRET" BENCH_CAMPAIGN=c
        BENCH_BASIC="$(printf 'clevertap:%s' "$SECRET" | base64 | tr -d '\n')")
    env "${env[@]}" BENCH_TAG="warm-$name" BENCH_RESULT_FILE="$OUT/warm.result" \
        wrk -t2 -c32 -d3s -s bench/campaign.lua "http://127.0.0.1:$PORT/clevertap/campaigns/c" >/dev/null
    env "${env[@]}" BENCH_TAG="$name" BENCH_RESULT_FILE="$OUT/$name.result" \
        wrk -t2 -c32 -d"$DURATION" --latency -s bench/campaign.lua \
        "http://127.0.0.1:$PORT/clevertap/campaigns/c" >"$OUT/$name.txt"
    if [ -n "$burner" ]; then
        kill "$burner"
        wait "$burner" 2>/dev/null || true
    fi
    kill "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    while port_open; do sleep 0.1; done
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
