"""`cifarkit serve-web` under attack: a real server on a random loopback port, raw HTTP requests with
traversal variants, slow and half-open clients, and the CLI's start-up failures."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from cifarkit.serve import ServeError, WebServer

SECRET = "top secret outside the roots"


@pytest.fixture
def site(tmp_path):
    """A built page (with a symlink out of it and one inside it), an exported model, and a secret beside them."""
    web = tmp_path / "dist"
    (web / "assets").mkdir(parents=True)
    (web / "index.html").write_text("<html>page</html>")
    (web / "assets" / "app.js").write_text("console.log('app')")
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    (web / "assets" / "escape.txt").symlink_to(secret)
    (web / "assets" / "escape-dir").symlink_to(tmp_path)
    (web / "assets" / "inside.js").symlink_to(web / "assets" / "app.js")
    model = tmp_path / "export"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"onnx-bytes")
    (model / "model.json").write_text(json.dumps(export_metadata(classes=["airplane", "automobile"])))
    (model / "other.txt").write_text(SECRET)  # beside the model, but not one of its files
    return web, model / "model.onnx"


@pytest.fixture
def server(site):
    web, onnx = site
    with WebServer(onnx, web, port=0, samples=0, max_threads=4) as served:
        served.server.timeout = 0.5
        thread = threading.Thread(target=served.serve_forever, daemon=True)
        thread.start()
        yield served
        served.server.shutdown()


def export_metadata(**changes) -> dict:
    """A complete model.json (the shipped model's, which follows the schema), with `changes`."""
    shipped = json.loads((Path(__file__).resolve().parents[1] / "web" / "public" / "model" / "model.json").read_text())
    metadata = {**shipped, "dataset": "cifar10", "superclasses": None, "fine_to_coarse": None, **changes}
    return metadata


def raw_get(port: int, target: bytes, method: bytes = b"GET") -> tuple[int, bytes]:
    """Send one request line as given (no client-side normalisation of the path) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(method + b" " + target + b" HTTP/1.0\r\nHost: x\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks)
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_serves_the_page_and_the_model(server):
    port = server.address[1]
    assert raw_get(port, b"/") == (200, b"<html>page</html>")
    assert raw_get(port, b"/assets/app.js")[1] == b"console.log('app')"
    assert raw_get(port, b"/assets/inside.js")[0] == 200  # a link that stays inside the page is fine
    assert raw_get(port, b"/model/model.onnx") == (200, b"onnx-bytes")
    assert json.loads(raw_get(port, b"/model/model.json")[1])["format"] == "cifarkit-onnx"
    assert raw_get(port, b"/model/model.json?v=1")[0] == 200
    assert raw_get(port, b"/index.html", b"HEAD") == (200, b"")


@pytest.mark.parametrize("target", [
    b"/model//etc/passwd", b"/model//", b"//etc/passwd", b"/model/../../etc/passwd", b"/%2e%2e/%2e%2e/etc/passwd",
    b"/model/%2e%2e/secret.txt", b"/model/..%2fsecret.txt", b"/model/%2Fetc%2Fpasswd", b"/..%5c..%5csecret.txt",
    b"/assets/escape.txt", b"/assets/escape-dir/secret.txt", b"/model/other.txt", b"/assets/", b"/assets",
    b"/index.html%00.png", b"/model/model.json\x00", b"/" + b"a/" * 5000, b"/%ff%fe", b"/model/%c0%ae%c0%ae/secret.txt",
    b"http://evil/../../secret.txt", b"/./index.html/../../secret.txt",
])
def test_traversal_and_odd_paths_get_404_and_never_the_secret(server, target):
    status, body = raw_get(server.address[1], target)
    assert status in (400, 404, 414)
    assert SECRET.encode() not in body and b"root:" not in body and b"Directory listing" not in body


def test_other_methods_are_refused(server):
    status, body = raw_get(server.address[1], b"/index.html", b"POST")
    assert status == 501 and b"page" not in body


def test_idle_and_slow_clients_never_starve_real_requests(server):
    """Connections that send nothing, or drip a request a byte at a time, wait for their head without a worker
    thread: with four workers, 16 idle and 20 slow connections open, every real request is answered at once;
    the slow ones are cut off at the head deadline (408), not kept."""
    port = server.address[1]
    server.server.head_seconds = 3.0
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(16)]
    slow = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
    try:
        for s in slow:
            s.sendall(b"GET /ind")
        time.sleep(0.3)
        assert threading.active_count() < 4 + 16  # no thread per waiting connection
        started = time.monotonic()
        for _ in range(15):
            assert raw_get(port, b"/") == (200, b"<html>page</html>")
        assert time.monotonic() - started < 5
        for s in slow:
            with contextlib.suppress(OSError):  # a byte now and then does not extend the deadline
                s.sendall(b"e")
        s = slow[0]
        s.settimeout(15)
        assert s.recv(100).startswith(b"HTTP/1.0 408")
    finally:
        for s in idle + slow:
            s.close()
    status, _ = raw_get(port, b"/")
    assert status == 200

def test_a_client_that_hangs_up_leaves_no_traceback(site, capsys):
    web, onnx = site
    with WebServer(onnx, web, port=0, samples=0) as served:
        thread = threading.Thread(target=served.serve_forever, daemon=True)
        thread.start()
        port = served.address[1]
        for payload in (b"GET /model/model.onnx HTTP/1.0\r\n\r\n", b"\x00\x01\x02 garbage\r\n\r\n", b"GET /\x00 H"):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(payload)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        assert raw_get(port, b"/")[0] == 200
        served.server.shutdown()
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out


def _temp_copies() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("cifarkit-serve-*")}


def _cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "cifarkit", "serve-web", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_sigterm_removes_the_temporary_copy(site):
    web, onnx = site
    before = _temp_copies()
    process = _cli("--onnx", str(onnx), "--web-dir", str(web), "--port", "0", "--samples", "0")
    line = process.stdout.readline()
    assert "serving the page on http://127.0.0.1:" in line
    assert _temp_copies() - before  # the copy exists while serving
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    assert _temp_copies() == before


def test_busy_port_and_bad_values_are_one_line_errors(site):
    web, onnx = site
    before = _temp_copies()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args, message in (
            (["--port", str(port)], "cannot listen on 127.0.0.1"),
            (["--port", "70000"], "--port must be between 0 and 65535"),
            (["--samples", "-1"], "--samples must be between 0 and 500"),
            (["--samples", "100000"], "--samples must be between 0 and 500"),
        ):
            process = _cli("--onnx", str(onnx), "--web-dir", str(web), *args)
            out, err = process.communicate(timeout=60)
            assert process.returncode == 1, err
            assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert _temp_copies() == before


def test_binding_beyond_loopback_warns(site):
    web, onnx = site
    process = _cli("--onnx", str(onnx), "--web-dir", str(web), "--port", "0", "--samples", "0", "--host", "0.0.0.0")
    try:
        assert "serving the page" in process.stdout.readline()
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    assert "warning: listening on 0.0.0.0" in err


def test_missing_metadata_is_an_error(site):
    web, onnx = site
    onnx.with_suffix(".json").unlink()
    with pytest.raises(ServeError, match="model.json beside it"):
        WebServer(onnx, web)


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_sigterm_during_startup_leaves_nothing(site):
    web, onnx = site
    before = _temp_copies()
    process = _cli("--onnx", str(onnx), "--web-dir", str(web), "--port", "0", "--samples", "0")
    process.stdout.readline()
    process.terminate()
    process.wait(timeout=20)
    assert _temp_copies() == before


def test_a_dripping_client_is_cut_off_by_the_whole_request_deadline(site):
    """A header line every half second never trips a per-recv timeout; the whole request's deadline does."""
    web, onnx = site
    with WebServer(onnx, web, port=0, samples=0, max_threads=4) as served:
        served.server.timeout = 0.5
        served.server.head_seconds = 2.0
        thread = threading.Thread(target=served.serve_forever, daemon=True)
        thread.start()
        try:
            drip = socket.create_connection(("127.0.0.1", served.address[1]), timeout=30)
            drip.sendall(b"GET / HTTP/1.0\r\n")
            started, closed = time.monotonic(), False
            for i in range(40):  # 20 s of dripping if nothing cuts it off
                time.sleep(0.5)
                try:
                    drip.sendall(f"X-Drip-{i}: x\r\n".encode())
                except OSError:  # the server closed the connection
                    closed = True
                    break
                drip.settimeout(0.01)
                try:
                    answer = drip.recv(100)
                except TimeoutError:
                    continue  # still waiting
                except OSError:
                    answer = b""
                assert answer == b"" or answer.startswith(b"HTTP/1.0 408"), answer
                closed = True  # answered 408 and closed, or closed
                break
            drip.close()
            assert closed and time.monotonic() - started < 10
        finally:
            served.server.shutdown()


@pytest.mark.parametrize("text, problem", [("[]", "not a JSON object"), ('{"format": 3}', "not a cifarkit export"),
                                           ('{"format": "cifarkit-onnx", "classes": [1]}', "lacks 'model'"),
                                           ("[" * 100000, "not valid JSON")])
def test_malformed_model_json_is_a_one_line_error(site, text, problem):
    web, onnx = site
    onnx.with_suffix(".json").write_text(text)
    with pytest.raises(ServeError, match=problem):
        WebServer(onnx, web)


@pytest.mark.parametrize("request_line, status", [(b"GET / HTTP/9.9", b"505"), (b"GET / HTTP/2.0", b"505"),
                                                  (b"GARBAGE", b"400"), (b"GET / HTTP/x", b"400")])
def test_every_answer_has_a_status_line(server, request_line, status):
    with socket.create_connection(("127.0.0.1", server.address[1]), timeout=10) as s:
        s.sendall(request_line + b"\r\n\r\n")
        answer = s.recv(200)
    assert answer.startswith(b"HTTP/1.0 " + status), answer
