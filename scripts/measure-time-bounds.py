#!/usr/bin/env python3
"""Issue 11: the latency of time-bounded queries (`since`, `until`) on a large store.

Starts each given herald binary on an empty embedded store of its own, fills it with
--events events (1,000-event batches, 40 subjects, ~150-byte payloads), then sends
--queries queries of each kind with random bounds (limit 100) over one keep-alive
connection and prints p50 and p99 per kind. Binaries run one after the other, with the
same bounds (a fixed seed), so two builds compare in one run.

    cargo build --release -p herald
    python3 scripts/measure-time-bounds.py target/release/herald [OTHER_BINARY ...]

Only the standard library; the hub's output goes to a log file (never an undrained pipe).
"""

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import tempfile
import time
import urllib.parse
from datetime import datetime

BATCH = 1000
SUBJECTS = 40


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iso(moment):
    return moment.isoformat().replace("+00:00", "Z")


def parse(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def measure(binary, events, queries):
    with tempfile.TemporaryDirectory(prefix="herald-time-bounds-") as scratch:
        port = free_port()
        with open(os.path.join(scratch, "hub.log"), "wb") as log:
            hub = subprocess.Popen(
                [binary, "serve", "--listen", f"127.0.0.1:{port}",
                 "--data", os.path.join(scratch, "herald.db")],
                stdout=log, stderr=subprocess.STDOUT)
            try:
                return run(port, events, queries)
            finally:
                hub.terminate()
                hub.wait(timeout=30)


def run(port, events, queries):
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.request("GET", "/health")
            health = conn.getresponse()
            health.read()
            if health.status == 200:
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    batch = [{"subject": f"hub.t.s{i % SUBJECTS}", "payload": {"i": i, "pad": "x" * 100}}
             for i in range(BATCH)]
    body = json.dumps({"events": batch})
    for _ in range(events // BATCH):
        conn.request("POST", "/api/events:batch", body=body,
                     headers={"content-type": "application/json"})
        response = conn.getresponse()
        response.read()
        assert response.status == 201, response.status

    def one(path):
        conn.request("GET", path)
        response = conn.getresponse()
        answer = response.read()
        assert response.status == 200, (response.status, answer)
        return json.loads(answer)

    first = parse(one("/api/events?limit=1")[0]["timestamp"])
    last = parse(one(f"/api/events?limit=1&after_seq={events - 1}")[0]["timestamp"])
    rng = random.Random(1)
    kinds = {"since": [], "until": [], "since + subject": []}
    for _ in range(queries):
        since = first + (last - first) * rng.random()
        until = since + (last - since) * rng.random()
        for kind, params in (("since", {"since": iso(since)}),
                             ("until", {"until": iso(until)}),
                             ("since + subject", {"since": iso(since), "subject": "hub.t.s7"})):
            params["limit"] = 100
            started = time.perf_counter()
            one("/api/events?" + urllib.parse.urlencode(params))
            kinds[kind].append((time.perf_counter() - started) * 1000)
    return kinds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("binaries", nargs="+")
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    print(f"{args.events:,} events, {args.queries} queries of each kind, limit 100")
    print("| binary | since p50 / p99 | until p50 / p99 | since + subject p50 / p99 |")
    print("|---|---|---|---|")
    for binary in args.binaries:
        kinds = measure(binary, args.events, args.queries)
        cells = []
        for values in kinds.values():
            values.sort()
            cells.append(f"{values[len(values) // 2]:.3f} / {values[int(len(values) * 0.99)]:.3f} ms")
        print(f"| {binary} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
