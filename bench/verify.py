"""Durability check after a bench run: every call wrk saw answered 2xx is on disk.

Usage: python bench/verify.py DB_FILE TAG IDS_FILE RESULT_FILE

Opens the SQLite file with a fresh connection after the bridge process was killed (SIGKILL,
so nothing could be flushed at shutdown) and checks that

* every delivery id wrk received in a 2xx answer is a row of ``deliveries`` whose email
  belongs to this run, and
* the number of this run's rows equals the number of 2xx answers, give or take the calls
  wrk had sent but not yet read the answer of when its clock ran out (at most one per
  connection): those may be committed without wrk having counted them.

Exits 1 when a check fails.
"""

from __future__ import annotations

import sqlite3
import sys


def parse_result(path: str) -> dict[str, float]:
    with open(path) as fh:
        line = fh.read().split()
    return {k: float(v) for k, v in (item.split("=", 1) for item in line[1:])}


def main() -> int:
    db_file, tag, ids_file, result_file = sys.argv[1:5]
    result = parse_result(result_file)
    ok = int(result["ok"])
    unanswered = int(result["sent"] - result["ok"] - result["non2xx"])
    with open(ids_file) as fh:
        acked = [int(line) for line in fh if line.strip()]

    conn = sqlite3.connect(db_file)
    like = f"{tag.lower()}-%"
    rows = conn.execute("SELECT count(*) FROM deliveries WHERE email LIKE ?", (like,)).fetchone()[0]
    calls = conn.execute(
        "SELECT count(*) FROM inbound_calls WHERE status = 'accepted' AND body LIKE ?",
        (f'%"Email":"{tag}-%',),
    ).fetchone()[0]
    conn.execute("CREATE TEMP TABLE acked (id INTEGER PRIMARY KEY)")
    conn.executemany("INSERT OR IGNORE INTO acked (id) VALUES (?)", ((i,) for i in acked))
    found = conn.execute(
        "SELECT count(*) FROM acked JOIN deliveries d ON d.id = acked.id WHERE d.email LIKE ?",
        (like,),
    ).fetchone()[0]
    distinct = conn.execute("SELECT count(*) FROM acked").fetchone()[0]
    conn.close()

    extra = rows - ok
    print(
        f"durability: 2xx answers={ok}  ids in answers={len(acked)} (distinct {distinct})  "
        f"acknowledged ids found on disk={found}  deliveries rows of the run={rows}  "
        f"accepted inbound calls={calls}  rows - 2xx={extra}  "
        f"unanswered when wrk stopped={unanswered}"
    )
    failures = []
    if len(acked) != ok or distinct != ok:
        failures.append("not one distinct delivery id per 2xx answer")
    if found != distinct:
        failures.append(f"{distinct - found} acknowledged deliveries are missing from the database")
    if not 0 <= extra <= max(unanswered, 0):
        failures.append("row count does not match the 2xx answers")
    if calls != rows:
        failures.append("inbound calls and deliveries of the run differ")
    if failures:
        print("DURABILITY FAILED: " + "; ".join(failures))
        return 1
    print("DURABILITY OK" + (" (rows == 2xx answers)" if extra == 0 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
