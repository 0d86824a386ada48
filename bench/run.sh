#!/usr/bin/env bash
# Durable ingest vs a bare FastAPI endpoint, side by side, with wrk.  See bench/README.md.
#
#   make bench            # or: bash bench/run.sh
#
# Settings (environment):
#   PYTHON               interpreter with the bridge installed (default .venv/bin/python)
#   BENCH_ROUNDS         rounds of bare, bridge, bridge worker off, one after another (default 3);
#                        the headline is the median round (its ratios are taken within it)
#   BENCH_DURATION       measured wrk run per endpoint and round (default 10s)
#   BENCH_WARMUP         warm-up wrk run before it, not counted (default 3s)
#   BENCH_CONNECTIONS    concurrent connections (default 32)
#   BENCH_THREADS        wrk threads (default 2)
#   BENCH_AUTH           basic (Basic-auth password) or header (X-Bridge-Secret); default basic
#   BENCH_BRIDGE_PORT    default 18181;  BENCH_BARE_PORT  default 18182; BENCH_FAKE_PORT 18183
#   BENCH_DELIVERY_RATE  BRIDGE_MAILMODO_RATE_PER_SECOND while delivery flows (default 2000)
#   BENCH_DRAIN_CALLS    backlog size of the delivery-engine run (default 5000)
#   BENCH_SYNCHRONOUS    BRIDGE_SQLITE_SYNCHRONOUS for the bridge (default FULL, durable)
#   BENCH_WRITER         BRIDGE_INGEST_WRITER for the bridge (default process; or thread)
#   BENCH_OUT            where databases, logs and wrk output go (default bench/out/<time>)
#
# Nothing is installed by this script; it needs wrk and a Python with the bridge (make bench
# creates .venv).  Exit status 0 means the run completed and the durability check passed;
# whether the throughput target was met is printed (and written to summary.md).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

PYTHON=${PYTHON:-.venv/bin/python}
ROUNDS=${BENCH_ROUNDS:-3}
DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-3s}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-2}
AUTH=${BENCH_AUTH:-basic}
BRIDGE_PORT=${BENCH_BRIDGE_PORT:-18181}
BARE_PORT=${BENCH_BARE_PORT:-18182}
FAKE_PORT=${BENCH_FAKE_PORT:-18183}
DELIVERY_RATE=${BENCH_DELIVERY_RATE:-2000}
SYNCHRONOUS=${BENCH_SYNCHRONOUS:-FULL}
WRITER=${BENCH_WRITER:-process}
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=${BENCH_OUT:-bench/out/$STAMP}
SECRET="bench-secret-$STAMP"
RUN_TAG="run-$STAMP"
CAMPAIGN="bench-campaign"

# shellcheck source=bench/lib.sh
. bench/lib.sh
need_tools wrk
if [ ! -x "$PYTHON" ]; then
    echo "no Python at $PYTHON; run 'make bench' (it creates .venv) or set PYTHON=..." >&2
    exit 2
fi
if ! "$PYTHON" -c 'import uvloop, httptools, app' 2>/dev/null; then
    echo "$PYTHON lacks the bridge or uvloop/httptools (uvicorn[standard]); run 'make bench'" >&2
    exit 2
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

event_loop_of() {  # what the process really runs on, from its memory map
    local maps="/proc/$1/maps" loop=asyncio http=h11
    if [ -r "$maps" ]; then
        grep -q 'uvloop/loop' "$maps" && loop=uvloop
        grep -q 'httptools/parser' "$maps" && http=httptools
        echo "$loop/$http"
    else
        echo "unknown"
    fi
}

process_tree() {  # process_tree PID -> PID and every descendant (the bridge's writer child)
    local kid
    echo "$1"
    for kid in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        process_tree "$kid"
    done
}

cpu_snapshot() {  # cpu_snapshot PID -> "machine_total machine_idle process_tree_ticks"
    local proc=0 p t
    for p in $(process_tree "$1"); do
        t=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)
        proc=$((proc + t))
    done
    awk -v p="$proc" '/^cpu / { print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6, p; exit }' /proc/stat
}

# The block device holding the database (its name in /proc/diskstats), for the disk columns.
DISK_DEV=$(basename "$(df --output=source "$OUT" | tail -n 1)")
disk_snapshot() {  # -> "sectors_written ms_doing_io" of DISK_DEV ("0 0" if it is not listed)
    awk -v d="$DISK_DEV" '$3 == d { print $10, $13; found = 1 } END { if (!found) print 0, 0 }' /proc/diskstats
}

# run_wrk NAME PORT PID TAG DURATION [IDS_FILE] -> writes $OUT/NAME.{txt,result,cpu}
# NAME.cpu: CPU cores busy on average during the run: server (with its child processes),
# wrk, everything else; and the disk: MB written per second and the share of the time it was
# busy (everything the machine wrote, the bridge's WAL, checkpoints and logs mostly).
run_wrk() {
    local name=$1 port=$2 pid=$3 tag=$4 duration=$5 ids=${6:-} before after wrk_cpu
    local disk_before disk_after started ended
    local TIMEFORMAT='%U %S'
    before=$(cpu_snapshot "$pid")
    disk_before=$(disk_snapshot)
    started=$(date +%s%N)
    wrk_cpu=$( { time wrk_campaign "$port" "$tag" "$OUT/$name.result" "$duration" "$ids" \
        >"$OUT/$name.txt" 2>&1; } 2>&1) || {
        cat "$OUT/$name.txt" >&2
        exit 1
    }
    ended=$(date +%s%N)
    after=$(cpu_snapshot "$pid")
    disk_after=$(disk_snapshot)
    echo "$before $after $wrk_cpu $(getconf CLK_TCK) $(nproc) $disk_before $disk_after $started $ended" | awk '{
        wall = ($4 - $1) / $10                      # elapsed ticks per CPU
        machine = ($4 - $1 - ($5 - $2)) / wall      # busy cores, all processes
        server = ($6 - $3) / wall
        client = ($7 + $8) * $9 / wall
        others = machine - server - client
        seconds = ($16 - $15) / 1e9
        disk_mb_s = ($13 - $11) * 512 / 1e6 / seconds
        disk_busy = ($14 - $12) / 10 / seconds      # ms busy per second, as a percentage
        printf "server=%.2f wrk=%.2f others=%.2f machine=%.2f disk_mb_s=%.1f disk_busy=%.0f\n", server, client, (others > 0 ? others : 0), machine, disk_mb_s, disk_busy
    }' >"$OUT/$name.cpu"
}

commits() {  # commits PORT -> "<commits> <calls>" so far, from the bridge's /metrics
    "$PYTHON" - "$1" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
values = {}
for line in text.splitlines():
    name, _, value = line.partition(" ")
    if name in ("ctmm_bridge_ingest_commit_batch_calls_count", "ctmm_bridge_ingest_commit_batch_calls_sum"):
        values[name] = float(value)
print(int(values.get("ctmm_bridge_ingest_commit_batch_calls_count", 0)), int(values.get("ctmm_bridge_ingest_commit_batch_calls_sum", 0)))
PY
}

field() {  # field NAME KEY -> value from the BENCH_RESULT line (or NAME.cpu)
    cat "$OUT/$1.result" "$OUT/$1.cpu" | tr ' ' '\n' | sed -n "s/^$2=//p"
}

report() {  # report NAME LABEL
    printf '  %-24s %8s calls/s  p50 %6s ms  p99 %7s ms  2xx %7s  non-2xx %s  errors %s  cores: server %s wrk %s others %s  disk %s MB/s busy %s%%\n' \
        "$2" "$(field "$1" ok_rps)" "$(field "$1" p50_ms)" "$(field "$1" p99_ms)" \
        "$(field "$1" ok)" "$(field "$1" non2xx)" "$(field "$1" errors)" \
        "$(field "$1" server)" "$(field "$1" wrk)" "$(field "$1" others)" \
        "$(field "$1" disk_mb_s)" "$(field "$1" disk_busy)"
}

echo "bench output: $OUT"
echo "wrk: $THREADS threads, $CONNECTIONS connections, warm-up $WARMUP, measured $DURATION, auth $AUTH"

# --- 0. the disk: one fsynced SQLite commit per call, for reference ----------------------------
"$PYTHON" bench/disk_probe.py "$OUT" 3 >"$OUT/disk.txt"
echo "disk: $(cut -d' ' -f2- "$OUT/disk.txt") (one durable SQLite commit per call)"

# --- 1. the bare FastAPI endpoint --------------------------------------------------------------
bench_bare() {  # bench_bare NAME: start, warm up, measure, stop; writes $OUT/NAME.{txt,result,cpu}
    local name=$1
    start_bare "$BARE_PORT" "$OUT/$name.log"
    BARE_PID=$LAST_PID
    wait_port "$BARE_PORT" "$BARE_PID" "$OUT/$name.log"
    BARE_STACK=$(event_loop_of "$BARE_PID")
    echo "$name up (pid $BARE_PID, $BARE_STACK); warming up, then measuring..."
    run_wrk "$name-warmup" "$BARE_PORT" "$BARE_PID" "warm-$name-$STAMP" "$WARMUP"
    run_wrk "$name" "$BARE_PORT" "$BARE_PID" "$name-$STAMP" "$DURATION"
    kill "$BARE_PID"
    wait "$BARE_PID" 2>/dev/null || true
}

# --- 2. the bridge, twice: at serve's defaults with delivery flowing, and ingest only ----------
# `ctmm-bridge serve` runs uvicorn in one process with loop/http "auto" (uvloop and httptools
# when installed, as they are with uvicorn[standard]) and no access log.
#   bridge       serve's defaults: the embedded worker is on and delivers every accepted call
#                to a zero-latency fake Mailmodo (bench/fake_mailmodo.py) as fast as
#                BRIDGE_MAILMODO_RATE_PER_SECOND=$DELIVERY_RATE allows, while wrk writes.
#   bridge-idle  BRIDGE_EMBEDDED_WORKER=false: ingest alone, nothing reads the outbox.
"$PYTHON" -m uvicorn bench.fake_mailmodo:app --host 127.0.0.1 --port "$FAKE_PORT" \
    --no-access-log --log-level warning >"$OUT/fake-mailmodo.log" 2>&1 &
FAKE_PID=$!
PIDS+=("$FAKE_PID")
wait_port "$FAKE_PORT" "$FAKE_PID" "$OUT/fake-mailmodo.log"

fake_calls() {
    "$PYTHON" -c "import json, sys, urllib.request; print(json.load(urllib.request.urlopen('http://127.0.0.1:$FAKE_PORT/_stats', timeout=10))['calls'])"
}

# bench_bridge NAME WORKER(true|false): serve on a fresh database, warm up, measure, SIGKILL,
# check durability.  Writes $OUT/NAME.{txt,result,cpu,ids}, NAME-commits.txt, NAME-verify.txt,
# NAME-delivered.txt (calls that reached the fake Mailmodo during the measured run).
bench_bridge() {
    local name=$1 worker=$2 db="$OUT/$1.db" pid children alive before after
    rm -f "$db" "$db-wal" "$db-shm"
    env BRIDGE_DATABASE_URL="sqlite:///$db" \
        BRIDGE_SQLITE_SYNCHRONOUS="$SYNCHRONOUS" \
        BRIDGE_INGEST_WRITER="$WRITER" \
        BRIDGE_EMBEDDED_WORKER="$worker" \
        BRIDGE_LOG_FORMAT=json \
        BRIDGE_LOG_LEVEL=INFO \
        BRIDGE_CLEVERTAP_WEBHOOK_SECRETS="$SECRET" \
        BRIDGE_MAILMODO_WEBHOOK_SECRETS="bench-mm-$STAMP" \
        BRIDGE_ADMIN_TOKEN="bench-admin-$STAMP" \
        BRIDGE_MAILMODO_API_KEY="bench-key" \
        BRIDGE_MAILMODO_API_URL="http://127.0.0.1:$FAKE_PORT" \
        BRIDGE_MAILMODO_RATE_PER_SECOND="$DELIVERY_RATE" \
        BRIDGE_DEDUP_WINDOW_SECONDS=3600 \
        "$PYTHON" -m app.cli serve --host 127.0.0.1 --port "$BRIDGE_PORT" \
        >"$OUT/$name.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$BRIDGE_PORT" "$pid" "$OUT/$name.log"
    BRIDGE_STACK=$(event_loop_of "$pid")
    echo "$name up (pid $pid, $BRIDGE_STACK, synchronous=$SYNCHRONOUS, writer=$WRITER, embedded worker $worker); warming up, then measuring..."
    run_wrk "$name-warmup" "$BRIDGE_PORT" "$pid" "warm-$name-$STAMP" "$WARMUP"
    local commits_before delivered_before
    commits_before=$(commits "$BRIDGE_PORT")
    delivered_before=$(fake_calls)
    run_wrk "$name" "$BRIDGE_PORT" "$pid" "$RUN_TAG-$name" "$DURATION" "$OUT/$name.ids"
    echo "$(( $(fake_calls) - delivered_before ))" >"$OUT/$name-delivered.txt"
    echo "$commits_before $(commits "$BRIDGE_PORT")" | awk '{ n = $3 - $1; c = $4 - $2;
        printf "commits=%d calls=%d calls_per_commit=%.1f\n", n, c, (n > 0 ? c / n : 0) }' >"$OUT/$name-commits.txt"
    # SIGKILL: no graceful shutdown may flush anything; what is on disk now is what was
    # committed. Wait for the children (writer process) to exit before reading the file.
    children=$(process_tree "$pid" | tail -n +2)
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        alive=no
        for child in $children; do
            kill -0 "$child" 2>/dev/null && alive=yes
        done
        [ "$alive" = no ] && break
        sleep 0.1
    done
    "$PYTHON" bench/verify.py "$db" "$RUN_TAG-$name" "$OUT/$name.ids" "$OUT/$name.result" \
        >"$OUT/$name-verify.txt" || DURABLE=no
    echo "  durability ($name, SIGKILL then reopen): $(tr '\n' ' ' <"$OUT/$name-verify.txt")"
}

# The three run one after another, round after round, so that what the machine does meanwhile
# (other tenants, frequency, the hypervisor) falls on each of them alike: each round's ratios are
# taken within the round, and the headline is the round whose ratio is the median.
DURABLE=yes
for round in $(seq 1 "$ROUNDS"); do
    echo "-- round $round of $ROUNDS"
    bench_bare "bare-r$round"
    bench_bridge "bridge-r$round" true
    bench_bridge "bridge-idle-r$round" false
done
kill "$FAKE_PID" 2>/dev/null || true

# --- 3. the delivery engine: a backlog drained to a Mailmodo that is not the limit ------------
echo
echo "delivery: a backlog of ${BENCH_DRAIN_CALLS:-5000} calls drained by serve at its defaults (rate 100000/s, zero-latency fake)..."
BENCH_OUT="$OUT" BENCH_FAKE_PORT="$FAKE_PORT" "$PYTHON" bench/delivery.py >"$OUT/delivery.txt" 2>&1 || true
grep DELIVERY_RESULT "$OUT/delivery.txt" >"$OUT/drain.result" || echo "DELIVERY_RESULT failed=yes" >"$OUT/drain.result"
cat "$OUT/drain.result"

# --- 4. summary ---------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
delivered_rps() {  # delivered_rps NAME: deliveries to the fake per second of the measured run
    awk -v d="$(cat "$OUT/$1-delivered.txt")" -v s="$(field "$1" duration_s)" \
        'BEGIN { printf "%.0f", (s > 0 ? d / s : 0) }'
}
median() { awk -v n="$ROUNDS" 'NR == int((n + 1) / 2)'; }  # of sorted lines, one per round
# Per round: its ratios; the headline is the round whose ratio (delivery flowing) is the median.
ROUND_LINES=$(for round in $(seq 1 "$ROUNDS"); do
    echo "$(ratio "$(field "bridge-r$round" ok_rps)" "$(field "bare-r$round" ok_rps)") $round"
done | sort -n)
MEDIAN_ROUND=$(echo "$ROUND_LINES" | median | cut -d' ' -f2)
RATIOS=$(echo "$ROUND_LINES" | cut -d' ' -f1 | paste -sd, - | sed 's/,/, /g')
IDLE_LINES=$(for round in $(seq 1 "$ROUNDS"); do
    ratio "$(field "bridge-idle-r$round" ok_rps)" "$(field "bare-r$round" ok_rps)"; echo
done | sort -n)
IDLE_RATIO=$(echo "$IDLE_LINES" | median)
IDLE_RATIOS=$(echo "$IDLE_LINES" | paste -sd, - | sed 's/,/, /g')
RATIO=$(ratio "$(field "bridge-r$MEDIAN_ROUND" ok_rps)" "$(field "bare-r$MEDIAN_ROUND" ok_rps)")
BRIDGE_P99=$(for round in $(seq 1 "$ROUNDS"); do field "bridge-r$round" p99_ms; done | sort -g | tail -n 1)
DELIVERED_RPS=$(delivered_rps "bridge-r$MEDIAN_ROUND")
BAD=0
for round in $(seq 1 "$ROUNDS"); do
    BAD=$((BAD + $(field "bridge-r$round" non2xx) + $(field "bridge-r$round" errors) + $(field "bridge-r$round" not_accepted)))
done
drain() { tr ' ' '\n' <"$OUT/drain.result" | sed -n "s/^$1=//p"; }
DRAIN_RATE=$(drain deliveries_per_s)
DRAIN_CPU=$(drain cpu_us_per_delivery)
MET=$(awk -v r="$RATIO" -v p="$BRIDGE_P99" -v d="$DURABLE" -v bad="$BAD" \
    'BEGIN { print ((r >= 0.8 && p < 50 && d == "yes" && bad == 0) ? "MET" : "NOT MET") }')
# Issue 9 asks for the rate (>= 1,000/s) and for the CPU per delivery to be stated, with a goal
# of <= 400 us: each is judged on its own.
RATE_MET=$(awk -v r="${DRAIN_RATE:-0}" 'BEGIN { print ((r >= 1000) ? "MET" : "NOT MET") }')
CPU_MET=$(awk -v c="${DRAIN_CPU:-999999}" 'BEGIN { print ((c <= 400) ? "met" : "not met") }')

# Other processes on the machine skew both numbers; say so rather than report them as clean.
NOISY=$(for n in $(for round in $(seq 1 "$ROUNDS"); do echo "bare-r$round bridge-r$round bridge-idle-r$round"; done); do
    awk -v n="$n" '{ split($3, o, "="); if (o[2] > 0.15) printf "other processes kept %s cores busy during the %s run; ", o[2], n }' "$OUT/$n.cpu"
done)

CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
DISK=$(df -hT "$OUT" | awk 'NR == 2 { print $1 " (" $2 ", " $3 ")" }')
{
    echo "## Run $STAMP"
    echo
    echo "- machine: $(nproc) CPUs, ${CPU:-unknown CPU}, $(uname -sr), $("$PYTHON" -c 'import platform; print("Python", platform.python_version())')"
    echo "- disk holding the database: $DISK; one fsynced SQLite commit per call (\`bench/disk_probe.py\`): $(cut -d' ' -f2- "$OUT/disk.txt")"
    echo "- $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2), $THREADS threads, $CONNECTIONS connections, warm-up $WARMUP, measured $DURATION per endpoint in each of $ROUNDS rounds (bare, bridge, bridge worker off, one after another), auth $AUTH"
    echo "- $("$PYTHON" -c 'import fastapi, starlette, uvicorn, sqlalchemy, uvloop; print(f"fastapi {fastapi.__version__}, starlette {starlette.__version__}, uvicorn {uvicorn.__version__}, uvloop {uvloop.__version__}, SQLAlchemy {sqlalchemy.__version__}")')"
    echo "- servers: one uvicorn process each (the bridge's with its ingest writer: BRIDGE_INGEST_WRITER=$WRITER); bare $BARE_STACK, bridge $BRIDGE_STACK; no access log"
    echo "- bridge: \`serve\` defaults (BRIDGE_SQLITE_SYNCHRONOUS=$SYNCHRONOUS, embedded worker on) delivering to a zero-latency fake Mailmodo at BRIDGE_MAILMODO_RATE_PER_SECOND=$DELIVERY_RATE; bridge-idle: the same with BRIDGE_EMBEDDED_WORKER=false; fresh database files"
    echo
    echo "| round | endpoint | 2xx calls/s | ratio to bare (same round) | p50 ms | p99 ms | max ms | 2xx | non-2xx | socket errors | delivered to Mailmodo /s | cores: server / wrk / others | calls per fsynced commit | disk written MB/s (KB per call), busy |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for round in $(seq 1 "$ROUNDS"); do
        bare_rps=$(field "bare-r$round" ok_rps)
        for n in bare bridge bridge-idle; do
            run="$n-r$round"
            label="bare FastAPI (\`bench/bare_app.py\`)"; deliv=-; commits=-
            [ "$n" = bridge ] && { label="bridge, serve defaults, delivery flowing"; deliv=$(delivered_rps "$run"); }
            [ "$n" = bridge-idle ] && { label="bridge, worker off (ingest only)"; deliv=0; }
            [ "$n" = bare ] || commits=$(sed -n 's/.*calls_per_commit=//p' "$OUT/$run-commits.txt")
            [ "$round" = "$MEDIAN_ROUND" ] && [ "$n" = bridge ] && label="**$label (median round)**"
            disk="$(field "$run" disk_mb_s) ($(awk -v m="$(field "$run" disk_mb_s)" -v r="$(field "$run" ok_rps)" 'BEGIN { printf "%.1f", (r > 0 ? m * 1000 / r : 0) }')), $(field "$run" disk_busy) %"
            echo "| $round | $label | $(field "$run" ok_rps) | $(ratio "$(field "$run" ok_rps)" "$bare_rps") | $(field "$run" p50_ms) | $(field "$run" p99_ms) | $(field "$run" max_ms) | $(field "$run" ok) | $(field "$run" non2xx) | $(field "$run" errors) | $deliv | $(field "$run" server) / $(field "$run" wrk) / $(field "$run" others) | $commits | $disk |"
        done
    done
    echo
    echo "- ratio (serve defaults, delivery flowing) / bare, median of $ROUNDS rounds: **$RATIO** (target ≥ 0.8; rounds: $RATIOS); highest p99 of those runs $BRIDGE_P99 ms (target < 50 ms); worker off: $IDLE_RATIO (rounds: $IDLE_RATIOS)"
    echo "- durability after SIGKILL, every bridge run: $(cat "$OUT"/bridge*-verify.txt | grep -c 'DURABILITY OK') of $((2 * ROUNDS)) OK; median round: $(tr '\n' ' ' <"$OUT/bridge-r$MEDIAN_ROUND-verify.txt")"
    echo "- delivery engine (\`bench/delivery.py\`, backlog drained at serve defaults, rate 100000/s, zero-latency fake): **$DRAIN_RATE deliveries/s** (target ≥ 1,000/s: $RATE_MET), **$DRAIN_CPU µs CPU per delivery** (goal ≤ 400 µs: $CPU_MET) — \`$(cat "$OUT/drain.result")\`"
    echo "- ingest target: **$MET**"
    [ -z "$NOISY" ] || echo "- **noisy run**: $NOISY"
} >"$OUT/summary.md"

echo
for round in $(seq 1 "$ROUNDS"); do
    echo "  round $round$([ "$round" = "$MEDIAN_ROUND" ] && echo " (median)")"
    report "bare-r$round" "bare FastAPI endpoint"
    report "bridge-r$round" "bridge, serve defaults"
    echo "  (delivered to Mailmodo during the run: $(delivered_rps "bridge-r$round")/s)"
    report "bridge-idle-r$round" "bridge, worker off"
done
echo "  ratio $RATIO at serve defaults with delivery flowing, median of $ROUNDS rounds ($RATIOS; worker off: $IDLE_RATIO of $IDLE_RATIOS), target >= 0.8, highest p99 $BRIDGE_P99 ms (target < 50): $MET"
echo "  delivery engine: $DRAIN_RATE deliveries/s (>= 1000/s: $RATE_MET), $DRAIN_CPU us CPU per delivery (goal <= 400 us: $CPU_MET)"
[ -z "$NOISY" ] || echo "  WARNING: $NOISY the numbers are not clean; run again on a quiet machine"
echo
echo "summary for bench/RESULTS.md: $OUT/summary.md"
[ "$DURABLE" = yes ]
