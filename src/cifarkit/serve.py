"""`cifarkit serve-web`: serve the browser page (web/dist) with an exported model.

    cifarkit serve-web --onnx model.onnx [--web-dir web/dist] [--port 8000] [--samples 24] [--data-dir DIR]

The page is at http://127.0.0.1:PORT/; the model (model.onnx, model.json) and a gallery of sample test
images are served under /model/.

Only an allow-list is served: a table from URL path to file, built once at start-up from the built page's
regular files (resolved inside the page folder; links that lead out of it are left out) and the model's own
files. A request whose path is not a key of that table is a 404, whatever its dots, slashes, encodings or
bytes, so no request can name a file outside the table -- there is no path joining at request time at all.
Connections time out, worker threads are bounded (a full server answers 503 at once), and a client that
hangs up costs one quiet line, not a traceback.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import ipaddress
import mimetypes
import os
import queue
import selectors
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cifarkit.errors import CifarkitError
from cifarkit.export_metadata import metadata_problems
from cifarkit.files import json_text, read_json

MAX_SAMPLES = 500
MAX_PATH_LENGTH = 2048  # longer request paths are refused before any lookup
CONTENT_TYPES = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript",
                 ".onnx": "application/octet-stream", ".json": "application/json", ".html": "text/html",
                 ".css": "text/css", ".png": "image/png", ".svg": "image/svg+xml", ".webmanifest":
                 "application/manifest+json"}


class ServeError(CifarkitError):
    """The page or the model to serve is missing, or the server cannot start."""


def write_samples(model_json: dict, folder: Path, count: int, data_dir: str | None = None) -> int:
    """PNG files of the first test images of the model's dataset, if a local copy is at hand."""
    from PIL import Image

    from cifarkit.data import load_dataset
    from cifarkit.errors import DatasetError

    try:
        data = load_dataset(model_json["dataset"], data_dir, download=False)
    except (DatasetError, KeyError):
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    # one image of every class in turn: the test files may be sorted by class
    rank_in_class = np.zeros(len(data.test_labels), dtype=np.int64)
    for c in np.unique(data.test_labels):
        members = np.flatnonzero(data.test_labels == c)
        rank_in_class[members] = np.arange(len(members))
    order = np.lexsort((data.test_labels, rank_in_class))[:count]
    index = []
    for i in order.tolist():
        name = f"test-{i:04d}.png"
        Image.fromarray(data.test_images[i]).save(folder / name)
        index.append({"file": name, "label": data.classes[data.test_labels[i]]})
    (folder / "index.json").write_text(json_text(index, indent=None))
    return len(index)


def check_model_json(metadata, path: Path) -> dict:
    """model.json as `cifarkit export` writes it, or a one-line ServeError naming what is wrong (the verdict
    @cifarkit/classify gives too: export_metadata.metadata_problems)."""
    problems = metadata_problems(metadata)
    if problems:
        advice = "" if "; export" in problems[0] else "; export the model again (cifarkit export --onnx model.onnx)"
        raise ServeError(f"{path}: {problems[0]}{advice}")  # advice once: a version problem carries its own
    return metadata


def files_under(root: Path) -> dict[str, Path]:
    """URL path -> file for every regular file under `root` whose real location stays inside `root`.
    Symbolic links are followed only where they resolve inside the root; anything else is left out."""
    root = root.resolve()
    table: dict[str, Path] = {}
    for folder, _, files in os.walk(root, followlinks=False):
        for name in files:
            path = Path(folder) / name
            real = path.resolve()
            if not real.is_relative_to(root) or not real.is_file():
                continue
            table["/" + path.relative_to(root).as_posix()] = real
    return table


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Handler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD of the files in `server.routes`; everything else is 404 (or 405 for other methods)."""

    server_version = "cifarkit"
    sys_version = ""
    timeout = 10  # seconds a client may take to read the answer, so that one that stops reading frees its thread
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive connections hold threads
    # every answer has a status line, also to a request whose version is unknown (HTTP/9.9) or missing: the
    # standard library's default, HTTP/0.9, answers those with a bare body
    default_request_version = "HTTP/1.0"

    def setup(self):
        super().setup()
        # the request line and headers arrived whole before a worker was given to this connection
        self.rfile = io.BytesIO(self.server.heads.pop(self.request, b""))

    def do_GET(self):
        self._send(body=True)

    def do_HEAD(self):
        self._send(body=False)

    def _send(self, body: bool) -> None:
        target = self.server.lookup(self.path)
        if target is None:
            self.send_error(404, "Not found")
            return
        try:
            handle = open(target, "rb")
        except OSError:
            self.send_error(404, "Not found")
            return
        with handle:
            size = os.fstat(handle.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPES.get(target.suffix.lower())
                             or mimetypes.guess_type(target.name)[0] or "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            if body:
                shutil.copyfileobj(handle, self.wfile)

    def log_message(self, format, *args):  # quiet: one line per request is noise here
        pass


class BoundedThreadingServer(http.server.HTTPServer):
    """Connections wait for their request head (line and headers) in one selector thread, which costs a socket
    and a few bytes each, not a thread: idle or slow clients (16 that connect and send nothing, 20 that drip a
    byte a second) cannot starve real requests. A head that is complete goes to a worker thread, at most
    `max_threads` at once (a request beyond that gets an immediate 503); a head that takes longer than
    `head_seconds`, or grows past MAX_HEAD_BYTES, is dropped; beyond `max_waiting` waiting connections a new
    one gets a 503. The table of served files (`routes`) is fixed before the first request."""

    daemon_threads = True
    MAX_HEAD_BYTES = 16 << 10

    def __init__(self, address, routes: dict[str, Path], max_threads: int = 16, max_waiting: int = 512,
                 head_seconds: float = 10.0):
        self.routes = routes
        self.slots = threading.BoundedSemaphore(max_threads)
        self.max_waiting, self.head_seconds = max_waiting, head_seconds
        self.heads: dict[socket.socket, bytes] = {}  # complete heads, handed to the worker's Handler
        self._arrivals: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._closing = False
        super().__init__(address, Handler)
        self._reader = threading.Thread(target=self._read_heads, daemon=True, name="serve-web heads")
        self._reader.start()

    def lookup(self, raw_path: str) -> Path | None:
        if len(raw_path) > MAX_PATH_LENGTH:
            return None
        try:
            path = urllib.parse.unquote(urllib.parse.urlsplit(raw_path).path, errors="strict")
        except (UnicodeDecodeError, ValueError):
            return None
        return self.routes.get("/index.html" if path == "/" else path)

    def process_request(self, request, client_address):
        """Called for each accepted connection: it waits for its head in the selector thread."""
        self._arrivals.put((request, client_address))
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")

    @staticmethod
    def _refuse(request, status: bytes = b"503 Service Unavailable") -> None:
        with contextlib.suppress(OSError):
            request.settimeout(1)
            request.sendall(b"HTTP/1.0 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def _read_heads(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._wake_reader, selectors.EVENT_READ)
        waiting: dict[socket.socket, list] = {}  # connection -> [address, bytes so far, deadline]

        def drop(connection, status: bytes | None = None) -> None:
            selector.unregister(connection)
            del waiting[connection]
            if status:
                self._refuse(connection, status)
            self.shutdown_request(connection)

        while not self._closing:
            now = time.monotonic()
            timeout = max(0.0, min((w[2] for w in waiting.values()), default=now + 1.0) - now)
            for key, _ in selector.select(timeout):
                if key.fileobj is self._wake_reader:
                    with contextlib.suppress(OSError):
                        self._wake_reader.recv(4096)
                    while not self._arrivals.empty():
                        connection, address = self._arrivals.get()
                        if len(waiting) >= self.max_waiting:
                            self._refuse(connection)
                            self.shutdown_request(connection)
                            continue
                        connection.setblocking(False)
                        waiting[connection] = [address, b"", time.monotonic() + self.head_seconds]
                        selector.register(connection, selectors.EVENT_READ)
                    continue
                connection = key.fileobj
                try:
                    chunk = connection.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                if not chunk:  # the client hung up
                    drop(connection)
                    continue
                entry = waiting[connection]
                entry[1] += chunk
                if b"\r\n\r\n" in entry[1] or b"\n\n" in entry[1]:
                    selector.unregister(connection)
                    del waiting[connection]
                    self._dispatch(connection, entry[0], entry[1])
                elif len(entry[1]) > self.MAX_HEAD_BYTES:
                    drop(connection, b"431 Request Header Fields Too Large")
            now = time.monotonic()
            for connection in [c for c, w in waiting.items() if w[2] <= now]:
                drop(connection, b"408 Request Timeout")  # too slow: its place goes to others
        for connection in list(waiting):
            drop(connection)
        selector.close()

    def _dispatch(self, request, client_address, head: bytes) -> None:
        if not self.slots.acquire(blocking=False):
            self._refuse(request)
            self.shutdown_request(request)
            return
        request.setblocking(True)
        request.settimeout(Handler.timeout)  # writing the answer to a client that stops reading
        self.heads[request] = head
        thread = threading.Thread(target=self._work, args=(request, client_address), daemon=True)
        thread.start()

    def _work(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.heads.pop(request, None)
            self.shutdown_request(request)
            self.slots.release()

    def server_close(self):
        self._closing = True
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")
        if getattr(self, "_reader", None) is not None:  # not started when binding failed
            self._reader.join(timeout=5)
        self._wake_reader.close()
        self._wake_writer.close()
        super().server_close()

    def handle_error(self, request, client_address):
        """One line, no traceback: clients hang up, time out and send garbage all the time."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError, socket.timeout)):
            return
        print(f"serve-web: request from {client_address[0]} failed: {type(error).__name__}: {error}",
              file=sys.stderr, flush=True)


@dataclass
class WebServer:
    """The server and the temporary folder with its copy of the model: a context manager that removes the
    folder however the server stops (Ctrl-C, SIGTERM, an error at start-up)."""

    onnx: Path | None  # None: the model that the built page ships (web/dist/model/)
    web_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    samples: int = 24
    data_dir: str | None = None
    max_threads: int = 16
    server: BoundedThreadingServer | None = field(default=None, init=False)
    model_dir: Path | None = field(default=None, init=False)

    def __post_init__(self):
        self.web_dir = Path(self.web_dir)
        if not 0 <= self.samples <= MAX_SAMPLES:
            raise ServeError(f"--samples must be between 0 and {MAX_SAMPLES}, got {self.samples}")
        if not 0 <= self.port <= 65535:
            raise ServeError(f"--port must be between 0 and 65535 (0: any free port), got {self.port}")
        if not (self.web_dir / "index.html").is_file():
            raise ServeError(f"{self.web_dir} holds no built page; build it first: cd web && npm ci && npm run build")
        if self.onnx is None:  # the shipped model, built into the page
            self.metadata_path = self.web_dir / "model" / "model.json"
            if not (self.web_dir / "model" / "model.onnx").is_file() or not self.metadata_path.is_file():
                raise ServeError(f"{self.web_dir} has no model/model.onnx; rebuild the page (cd web && npm run build) "
                                 "or pass --onnx MODEL.onnx")
        else:
            self.onnx = Path(self.onnx)
            self.metadata_path = self.onnx.with_suffix(".json")
            if not self.onnx.is_file() or not self.metadata_path.is_file():
                raise ServeError(f"{self.onnx} (with {self.metadata_path.name} beside it) not found; make it with: "
                                 "cifarkit export CHECKPOINT --onnx model.onnx")
        self.metadata = check_model_json(read_json(self.metadata_path, 16 << 20, ServeError, "model metadata"),
                                         self.metadata_path)

    def __enter__(self) -> WebServer:
        try:
            # bind first: a busy port or a bad host fails before anything is written
            self.server = BoundedThreadingServer((self.host, self.port), {}, self.max_threads)
        except OverflowError:
            raise ServeError(f"--port must be between 0 and 65535, got {self.port}") from None
        except OSError as e:
            raise ServeError(f"cannot listen on {self.host}:{self.port}: {e.strerror or e}"
                             + ("; choose another --port (0 picks a free one)" if e.errno == 98 else "")) from None
        try:
            self.model_dir = Path(tempfile.mkdtemp(prefix="cifarkit-serve-"))
            if self.onnx is not None:  # else the page's own model/ files are served
                shutil.copyfile(self.onnx, self.model_dir / "model.onnx")
                shutil.copyfile(self.metadata_path, self.model_dir / "model.json")
            write_samples(self.metadata, self.model_dir / "samples", self.samples, self.data_dir)
            routes = files_under(self.web_dir)
            routes.update({"/model" + key: path for key, path in files_under(self.model_dir).items()})
            self.server.routes = routes
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    @property
    def address(self) -> tuple[str, int]:
        return self.server.server_address[:2]

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.server_close()
        if self.model_dir is not None:
            shutil.rmtree(self.model_dir, ignore_errors=True)
            self.model_dir = None
