"""Instructions per call of the serving process, counted by valgrind's callgrind: a number that
does not move with the VM's speed, for comparing two versions of the API's hot path where
calls/s swing by a quarter from one minute to the next (bench/RESULTS.md, session 15).

    .venv/bin/python bench/instructions.py bridge     # serve, worker off (the API process)
    .venv/bin/python bench/instructions.py bare       # the bare FastAPI endpoint

The server runs under callgrind (its child processes, the writer included, are not counted);
300 campaign calls warm it up, the counters are zeroed, 1,000 more calls (8 keep-alive
connections, a new recipient each) are counted, and the count is dumped. Needs valgrind
(Debian: apt-get install valgrind); installs nothing. Takes about a minute.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import stop, wait_port

ROOT = Path(__file__).resolve().parents[1]
PYTHON = os.environ.get("PYTHON", sys.executable)
PORT = int(os.environ.get("BENCH_INSTRUCTIONS_PORT", "18188"))
SECRET = "instructions-secret"
WARM, COUNTED, CONNECTIONS = 300, 1000, 8
BODY = (
    '{"targetId":1472124953,"key_values":{"PromoCode":"MT50","PowerUser":"true"},'
    '"profiles":[{"Email":"%s@bench.example.com","Identity":"%s","ObjectId":"-g%s",'
    '"ProfileData":{"Last Score":308,"High Score":308,"Replayed":true},'
    '"Event_properties":{"Score":1200,"Game Mode":"Practice","Rating":1}}]}'
)


def drive(count: int, tag: str) -> None:
    """``count`` campaign calls from ``CONNECTIONS`` keep-alive connections; all must be 200."""
    numbers = itertools.count()
    auth = "Basic " + base64.b64encode(f"clevertap:{SECRET}".encode()).decode()
    failures: list[int] = []

    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
        while (i := next(numbers)) < count:
            who = f"{tag}-{i}"
            conn.request(
                "POST",
                "/clevertap/campaigns/c",
                body=BODY % (who, who, who),
                headers={"Authorization": auth, "Content-Type": "application/json"},
            )
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                failures.append(answer.status)
        conn.close()

    threads = [threading.Thread(target=run) for _ in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"{len(failures)} calls failed: {sorted(set(failures))}")


def main() -> None:
    target = sys.argv[1] if len(sys.argv) > 1 else "bridge"
    if target not in ("bridge", "bare"):
        raise SystemExit("usage: instructions.py bridge|bare")
    for tool in ("valgrind", "callgrind_control"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            raise SystemExit(f"{tool} is not installed (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        if target == "bridge":
            server = ["-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(PORT)]
        else:
            server = ["-m", "uvicorn", "bench.bare_app:app", "--host", "127.0.0.1"]
            server += ["--port", str(PORT), "--loop", "uvloop", "--http", "httptools"]
            server += ["--no-access-log", "--log-level", "warning"]
        env = os.environ | {
            "BRIDGE_DATABASE_URL": f"sqlite:///{tmp}/bridge.db",
            "BRIDGE_EMBEDDED_WORKER": "false",
            "BRIDGE_LOG_FORMAT": "json",
            "BRIDGE_CLEVERTAP_WEBHOOK_SECRETS": SECRET,
            "BRIDGE_ADMIN_TOKEN": "instructions-admin",
        }
        log = (Path(tmp) / "server.log").open("wb")
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", PYTHON, *server],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_port(PORT, proc, Path(tmp) / "server.log", timeout=180)
            drive(WARM, "warm")
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True)
            drive(COUNTED, "counted")
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True)
            dump = Path(f"{out}.1")
            for _ in range(100):
                if dump.exists() and "summary:" in dump.read_text(errors="replace"):
                    break
                time.sleep(0.1)
            summary = next(
                line
                for line in dump.read_text(errors="replace").splitlines()
                if line.startswith("summary:")
            )
        finally:
            stop(proc, timeout=60)
    per_call = int(summary.split()[1]) // COUNTED
    print(f"INSTRUCTIONS_RESULT target={target} instructions_per_call={per_call}")


if __name__ == "__main__":
    main()
