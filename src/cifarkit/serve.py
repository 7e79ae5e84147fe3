"""`cifarkit serve-web`: serve the browser page (web/dist) with an exported model, on this machine only.

    cifarkit serve-web --onnx model.onnx [--web-dir web/dist] [--port 8000] [--samples 24] [--data-dir DIR]

The page is at http://127.0.0.1:PORT/; the model (model.onnx, model.json) and a gallery of sample test
images are served under /model/.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from cifarkit.errors import CifarkitError


class ServeError(CifarkitError):
    """The page or the model to serve is missing."""


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
        index.append({"file": name, "label": data.class_names[data.test_labels[i]]})
    (folder / "index.json").write_text(json.dumps(index))
    return len(index)


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".mjs": "text/javascript", ".js": "text/javascript", ".onnx": "application/octet-stream"}

    def __init__(self, *args, model_dir: Path, **kwargs):
        self.model_dir = model_dir
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        if clean.startswith("/model/"):
            relative = Path(clean.removeprefix("/model/"))
            if ".." in relative.parts:
                return str(self.model_dir / "__refused__")
            return str(self.model_dir / relative)
        return super().translate_path(path)

    def log_message(self, format, *args):  # quiet: one line per request is noise here
        pass


def make_server(onnx: Path, web_dir: Path, host: str = "127.0.0.1", port: int = 8000, samples: int = 24,
                data_dir: str | None = None):
    onnx, web_dir = Path(onnx), Path(web_dir)
    if not (web_dir / "index.html").is_file():
        raise ServeError(f"{web_dir} holds no built page; build it first: cd web && npm ci && npm run build")
    metadata_path = onnx.parent / "model.json"
    if not onnx.is_file() or not metadata_path.is_file():
        raise ServeError(f"{onnx} (with model.json beside it) not found; make it with: "
                         "cifarkit export CHECKPOINT --onnx model.onnx")
    model_dir = Path(tempfile.mkdtemp(prefix="cifarkit-serve-"))
    shutil.copyfile(onnx, model_dir / "model.onnx")
    shutil.copyfile(metadata_path, model_dir / "model.json")
    write_samples(json.loads(metadata_path.read_text()), model_dir / "samples", samples, data_dir)
    handler = functools.partial(Handler, directory=str(web_dir), model_dir=model_dir)
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.model_dir = model_dir
    return server
