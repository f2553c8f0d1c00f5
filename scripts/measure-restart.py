#!/usr/bin/env python3
"""Issue 11 (g): restart after kill -9 with many events stored, and the hub's RSS.

Fills an embedded store with --events events (1,000-event batches from 4 threads),
then, --rounds times: kill -9 the hub while its WAL holds fresh writes, start it again,
and time the first `/health` 200 from the moment the process is spawned. It reports the
RSS after start + 20,000 writes, and the idle RSS after one query, against an empty
store's in the same run.

    cargo build --release -p herald
    python3 scripts/measure-restart.py --events 10000000    # ~3 min, ~2.8 GB on disk

Only the standard library; the hub's output goes to a log file (never an undrained pipe).
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

BATCH = 1000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub:
    def __init__(self, binary, data, log):
        self.port = free_port()
        self.spawned = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--data", data],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def first_health(self, timeout=30.0):
        """Seconds from spawn to the first 200 from /health."""
        deadline = self.spawned + timeout
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return time.monotonic() - self.spawned
            except OSError:
                pass
            time.sleep(0.002)
        raise RuntimeError("the hub did not become healthy")

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def body(start, n):
    return json.dumps(
        [
            {
                "subject": f"hub.bench.restart.s{(start + i) % 64}",
                "payload": {"n": start + i, "pad": "x" * 200},
            }
            for i in range(n)
        ]
    )


def publish(port, total, threads=4):
    per = total // threads

    def worker(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        done = 0
        while done < per:
            n = min(BATCH, per - done)
            conn.request(
                "POST",
                "/api/events:batch",
                body(k * per + done, n),
                {"Content-Type": "application/json"},
            )
            response = conn.getresponse()
            response.read()
            if response.status not in (200, 201):
                raise RuntimeError(f"batch answered {response.status}")
            done += n

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def query(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/api/events?subject=hub.bench.restart.s7&limit=100")
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status


def idle_rss(binary, data, log):
    hub = Hub(binary, data, log)
    hub.first_health()
    query(hub.port)
    time.sleep(2)
    rss = hub.rss_mib()
    hub.stop()
    return rss


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--herald-bin", default="target/release/herald")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="herald-restart-", dir=args.data_dir)
    log = open(os.path.join(root, "hub.log"), "ab")
    try:
        empty = idle_rss(args.herald_bin, os.path.join(root, "empty.db"), log)
        data = os.path.join(root, "herald.db")
        hub = Hub(args.herald_bin, data, log)
        hub.first_health()
        started = time.monotonic()
        publish(hub.port, args.events)
        fill = time.monotonic() - started
        print(f"filled {args.events:,} events in {fill:.1f} s ({args.events / fill:,.0f}/s)")
        publish(hub.port, 20_000, threads=2)
        for round in range(1, args.rounds + 1):
            hub.kill9()
            hub = Hub(args.herald_bin, data, log)
            ready = hub.first_health()
            publish(hub.port, 20_000, threads=2)
            print(
                f"round {round}: kill -9 -> first /health 200 in {ready * 1000:.0f} ms; "
                f"RSS after start + 20,000 writes {hub.rss_mib():.1f} MiB"
            )
        hub.stop()
        # The database and the event log's directory beside it.
        size = sum(
            os.path.getsize(os.path.join(dirpath, f))
            for dirpath, _, files in os.walk(root)
            for f in files
            if os.path.relpath(dirpath, root).startswith("herald.db")
            or f.startswith("herald.db")
        )
        full = idle_rss(args.herald_bin, data, log)
        print(
            f"idle RSS after start and one query: {full:.1f} MiB with "
            f"{args.events:,} events ({size / 1e9:.1f} GB), {empty:.1f} MiB on an empty store"
        )
    finally:
        log.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
