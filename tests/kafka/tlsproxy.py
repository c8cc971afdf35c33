"""A TLS-terminating TCP proxy for the TLS test: clients speak TLS to it, it speaks
plaintext to the broker (tansu 0.6 cannot take a certificate and a key together)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from pathlib import Path


def make_certificates(workdir: Path, openssl: str) -> tuple[str, str, str]:
    """A self-signed CA and a server certificate for 127.0.0.1 signed by it:
    (ca.pem, server.pem, server.key)."""
    d = workdir
    ext = d / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
        "ca.pem", "-days", "1", "-subj", "/CN=streamadapt test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
        "server.csr", "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", str(ext))
    return str(d / "ca.pem"), str(d / "server.pem"), str(d / "server.key")


class TlsProxy:
    """Accepts TLS on ``port`` and forwards the bytes to ``backend_port``."""

    def __init__(self, port: int, backend_port: int, cert: str, key: str) -> None:
        self.port, self.backend_port = port, backend_port
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", port))
        self.handshakes = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        self.handshakes += 1
        backend = socket.create_connection(("127.0.0.1", self.backend_port))
        threading.Thread(target=self._pump, args=(backend, client), daemon=True).start()
        self._pump(client, backend)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
