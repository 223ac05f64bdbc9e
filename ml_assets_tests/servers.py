"""Real servers the tests (and the benchmarks) start on loopback, and the waits around them: a
free port, one ``wait_for``, moto's S3 server in a process of its own, and a file server with
``Range`` requests in a thread of this process."""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def loopback_only(monkeypatch) -> None:
    """From here on (the test's ``monkeypatch`` undoes it), a connection to any host but this
    one fails the test."""
    import pytest

    connect = socket.socket.connect

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            pytest.fail(f"a test reached outside the machine: {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, predicate, timeout: float, every: float = 2.0, process=None):
    """``predicate()``'s first true value, polled every ``every`` seconds for ``timeout``; fails
    early when ``process`` (a Popen) ends first."""
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended (exit {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(every)
    return found


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on a free loopback port, in its own process session; yields its URL and
    stops it (SIGTERM, then SIGKILL of the group) at the end. The S3 tests and benchmarks/sensor.py use it."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start on port {port}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


class FileHandler(http.server.BaseHTTPRequestHandler):
    """Serves the files under the server's ``root`` with ``Range`` (and ``If-Range``) support;
    records every request in ``server.log``; ``server.drops[path] = n`` cuts the next answer for
    ``path`` after ``n`` bytes of its body, once; ``server.headers[path]`` adds headers."""

    protocol_version = "HTTP/1.1"
    server: FileServer

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.serve_path(head=False)

    def do_HEAD(self) -> None:
        self.serve_path(head=True)

    def serve_path(self, head: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        self.server.log.append((self.command, path, self.headers.get("Range")))
        file = self.server.root / urllib.parse.unquote(path).lstrip("/")
        if not file.is_file():
            self.send_error(404)
            return
        self.send_file(file, head, self.server.headers.get(path, {}))

    def send_file(self, file: Path, head: bool, headers: dict, etag: str | None = None) -> None:
        st = file.stat()
        etag = etag or f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        start, asked = 0, self.headers.get("Range")
        if asked and self.headers.get("If-Range", etag) == etag:
            start = int(asked.removeprefix("bytes=").split("-")[0])
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{st.st_size - 1}/{st.st_size}")
        self.send_header("Content-Length", str(st.st_size - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if head:
            return
        drop = self.server.drops.pop(urllib.parse.urlsplit(self.path).path, None)
        with open(file, "rb") as handle:
            self.connection.sendfile(handle, start, drop or st.st_size - start)
        if drop is not None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)


class FileServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, handler=FileHandler):
        super().__init__(("127.0.0.1", 0), handler)
        self.root = Path(root)
        self.log: list[tuple[str, str, str | None]] = []
        self.drops: dict[str, int] = {}
        self.headers: dict[str, dict[str, str]] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def serving(root: Path, handler=FileHandler) -> Iterator[FileServer]:
    """A :class:`FileServer` of ``root`` on a free loopback port, in a thread of this process."""
    server = FileServer(root, handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
