"""Fixtures for Herald's Python-side tests: a real `herald serve` on an ephemeral port.

The binary is $HERALD_BIN, or target/debug/herald (scripts/test.sh builds it first).
"""
import os
import pathlib
import subprocess
import tempfile
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("HERALD_BIN", str(ROOT / "target" / "debug" / "herald"))


class Herald:
    """A running hub: `url` is its base URL. Its stderr goes to a file (`stderr()`), never
    to a pipe nobody reads; stdout is read for the listening line only (nothing else is
    written there)."""

    def __init__(self, *args: str) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="herald-py-")
        self.stderr_path = pathlib.Path(self.dir.name) / "stderr.log"
        self.stderr_file = open(self.stderr_path, "wb")
        self.process = subprocess.Popen(
            # Webhook rules made by these tests point at loopback, which the webhook
            # guard refuses by default.
            [BINARY, "serve", "--listen", "127.0.0.1:0", "--data", f"{self.dir.name}/herald.db",
             "--webhook-allow-private", *args],
            stdout=subprocess.PIPE,
            stderr=self.stderr_file,
            text=True,
        )
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.process.stdout.readline()))
        reader.start()
        reader.join(timeout=20)
        if not line or "listening on" not in line[0]:
            self.process.kill()
            raise RuntimeError(f"herald did not start: {self.stderr()}")
        self.url = line[0].strip().rsplit(" ", 1)[-1]

    def stderr(self) -> str:
        """What the hub has logged so far (the last 16 KiB)."""
        return self.stderr_path.read_bytes()[-16384:].decode("utf-8", "replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.stderr_file.close()
        self.dir.cleanup()


@pytest.fixture()
def herald():
    hub = Herald()
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def shared_herald():
    hub = Herald()
    yield hub
    hub.stop()
