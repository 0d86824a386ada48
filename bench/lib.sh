# Sourced by bench/run.sh and bench/idle_core.sh: what both need to start the servers and
# drive them with wrk. Expects PYTHON and SECRET; THREADS, CONNECTIONS and AUTH default to
# wrk -t2 -c32 with Basic auth.

THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
AUTH=${AUTH:-basic}

need_tools() {  # need_tools TOOL...: exit 2 with a hint if one is missing (installs nothing)
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 && continue
        echo "$tool is not installed. Install it, then run again:" >&2
        case $tool in
            wrk) printf '  Debian/Ubuntu:  sudo apt-get update && sudo apt-get install -y wrk\n  macOS:          brew install wrk\n' >&2 ;;
            chrt) echo "  Debian/Ubuntu:  sudo apt-get install -y util-linux" >&2 ;;
        esac
        exit 2
    done
}

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

port_open() {  # port_open PORT
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

wait_port() {  # wait_port PORT PID LOG: until PORT answers; exit if PID dies or after 30 s
    for _ in $(seq 1 300); do
        port_open "$1" && return 0
        if ! kill -0 "$2" 2>/dev/null; then
            echo "the server on port $1 exited; its log ($3):" >&2
            tail -n 40 "$3" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "nothing listens on port $1 after 30 s" >&2
    exit 1
}

start_bare() {  # start_bare PORT LOG: the bare FastAPI endpoint; its pid in LAST_PID
    "$PYTHON" -m uvicorn bench.bare_app:app --host 127.0.0.1 --port "$1" --workers 1 \
        --loop uvloop --http httptools --no-access-log --log-level warning >>"$2" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

wrk_campaign() {  # wrk_campaign PORT TAG RESULT_FILE DURATION [IDS_FILE]: wrk's report on stdout
    BENCH_TAG=$2 BENCH_AUTH=$AUTH BENCH_SECRET=$SECRET \
        BENCH_BASIC=$(printf 'clevertap:%s' "$SECRET" | base64 | tr -d '\n') \
        BENCH_CAMPAIGN=${CAMPAIGN:-c} BENCH_IDS_FILE=${5:-} BENCH_RESULT_FILE=$3 \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$4" --timeout 10s --latency \
        -s bench/campaign.lua "http://127.0.0.1:$1/clevertap/campaigns/${CAMPAIGN:-c}"
}
