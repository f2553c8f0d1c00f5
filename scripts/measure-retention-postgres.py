"""Retention on PostgreSQL (BENCHMARKS.md): run `herald serve --data postgres://…/DB`, then
`python3 scripts/measure-retention-postgres.py http://HOST:PORT DB`. Retention on PostgreSQL: publish rounds of events under a max_events policy and
watch the events table's size (heap + indexes + TOAST) level off."""
import json, subprocess, sys, time, urllib.request

BASE = sys.argv[1]
DB = sys.argv[2]

def call(method, path, body=None):
    req = urllib.request.Request(BASE + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")

def size():
    out = subprocess.check_output(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", DB, "-tAc",
        "SELECT pg_total_relation_size('events'), (SELECT count(*) FROM events)"])
    s, n = out.decode().strip().split("|")
    return int(s), int(n)

call("PUT", "/api/retention", {"policies": [{"subjects": "hub.*.metrics.>", "max_events": 20000}]})
filler = "x" * 1000
for round_ in range(12):
    for start in range(0, 20000, 500):
        events = [{"subject": "hub.m.metrics.cpu", "payload": {"i": start + i, "f": filler}} for i in range(500)]
        call("POST", "/api/events:batch", {"events": events})
    time.sleep(15)
    s, n = size()
    print(f"round {round_ + 1:2d}: {(round_ + 1) * 20000:7d} published, {n:6d} kept, events table {s / 1e6:6.1f} MB", flush=True)
