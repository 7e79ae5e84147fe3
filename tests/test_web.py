"""The browser page, end to end in a real Chromium: it must classify like `cifarkit predict`, report bad
files and a missing model clearly, and keep working offline. Also: the golden vectors that the TypeScript
unit tests check are still what the Python side produces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarkit.images import load_image
from tests.iccprofile import add_colour_managed_pictures

WEB = Path(__file__).resolve().parents[1] / "web"
ARTIFACTS = Path(os.environ.get("CIFARKIT_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


def test_golden_vectors_are_what_python_produces():
    cases = json.loads((WEB / "packages" / "classify" / "test" / "golden" / "golden.json").read_text())
    assert len(cases) >= 5
    assert {case.get("fit", "squash") for case in cases} == {"squash", "crop"}
    for case in cases:
        expected = load_image(WEB / "packages" / "classify" / "test" / "golden" / case["file"],
                              fit=case.get("fit", "squash")).reshape(-1)
        assert np.array_equal(np.asarray(case["pixels"], dtype=np.uint8), expected), case["file"]


needs_browser = pytest.mark.skipif(
    not (WEB / "dist" / "index.html").is_file() or not Path(CHROMIUM).exists() or shutil.which("node") is None
    or not (WEB / "node_modules" / "playwright-core").is_dir(),
    reason="needs the built page (cd web && npm ci && npm run build), node and Chromium (/usr/bin/chromium)")


@needs_browser
def test_page_classifies_like_cifarkit_predict(trained_run, tmp_path):
    from cifarkit.export import export_onnx
    from cifarkit.predict import predict_files
    from cifarkit.serve import WebServer

    export_onnx(trained_run, tmp_path / "model" / "model.onnx")
    trained_data = json.loads((tmp_path / "model" / "model.json").read_text())
    assert trained_data["format"] == "cifarkit-onnx"
    rng = np.random.default_rng(3)
    pictures = []
    for i, size in enumerate([(32, 32), (97, 64), (40, 150)]):
        path = tmp_path / f"picture{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
        pictures.append(path)
    bad = tmp_path / "not-a-picture.png"
    bad.write_text("this is text")
    files = [pictures[0], bad, pictures[1], pictures[2]]

    trained = json.loads((trained_run / "config.json").read_text())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with WebServer(tmp_path / "model" / "model.onnx", WEB / "dist", port=0, samples=4,
                   data_dir=trained["data"]["data_dir"]) as web:
        thread = threading.Thread(target=web.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{web.address[1]}/"
            result = subprocess.run(["node", "e2e/classify.mjs", url, str(ARTIFACTS / "web-page.png"),
                                     *map(str, files)], cwd=WEB, capture_output=True, text=True, timeout=600)
        finally:
            web.server.shutdown()
    assert web.model_dir is None  # the temporary copy is gone
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ready"] == "true", report
    by_file = {Path(r["file"]).name: r for r in report["results"]}

    expected = {Path(p.path).name: p.classes[0][0] for p in predict_files(trained_run, pictures)}
    for name, top1 in expected.items():
        assert by_file[name]["top1"] == top1 and not by_file[name]["error"] and by_file[name]["rows"] == 5
    assert by_file[bad.name]["error"] and "not an image" in by_file[bad.name]["status"]
    assert by_file[bad.name]["top1"] is None  # and the next picture was still classified (checked above)
    assert report["offline"]["ready"] == "true" and report["offline"]["result"]["top1"] == expected[pictures[0].name]
    assert "could not fetch" in report["missingModel"].lower()
    assert not report["pageErrors"]
    assert report["samples"] == 4  # the gallery of test images
    assert (ARTIFACTS / "web-page.png").stat().st_size > 1000


@needs_browser
def test_page_works_out_of_the_box_with_the_shipped_model(tmp_path):
    """No training, no export: the built page carries the shipped model, and serve-web serves it as it is."""
    from cifarkit.predict import predict_files
    from cifarkit.serve import WebServer

    assert (WEB / "dist" / "model" / "model.onnx").is_file()
    pictures = []
    for i, colour in enumerate([(200, 40, 40), (30, 160, 60)]):
        path = tmp_path / f"plain{i}.png"
        Image.new("RGB", (45 + 10 * i, 38), colour).save(path)
        pictures.append(path)
    real = os.environ.get("CIFARKIT_TEST_CIFAR100")  # and real CIFAR-100 test pictures, the model's own kind
    if real and (Path(real) / "cifar-100-python" / "test").is_file():
        import pickle

        with open(Path(real) / "cifar-100-python" / "test", "rb") as f:
            images = pickle.load(f, encoding="bytes")[b"data"][:4].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        for i, image in enumerate(images):
            Image.fromarray(image).save(tmp_path / f"test{i}.png")
            pictures.append(tmp_path / f"test{i}.png")
    # a picture of none of the classes that the features alone take for an apple (test_classify_js's)
    from tests.test_classify_js import colour_wheel

    wheel = colour_wheel(tmp_path / "wheel.png")
    pictures.append(wheel)
    # colour-managed and 16-bit pictures: the page sees the colours Python and Node.js see
    rng = np.random.default_rng(3)
    pictures += add_colour_managed_pictures(tmp_path, rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    with WebServer(None, WEB / "dist", port=0, samples=0) as web:
        thread = threading.Thread(target=web.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{web.address[1]}/"
            result = subprocess.run(["node", "e2e/classify.mjs", url, str(tmp_path / "page.png"), *map(str, pictures)],
                                    cwd=WEB, capture_output=True, text=True, timeout=600)
        finally:
            web.server.shutdown()
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ready"] == "true" and not report["pageErrors"], report
    # the golden preprocessing vectors hold in Chromium too (the browser's decoder, the library's resampling)
    assert len(report["golden"]) >= 5 and all(diff in (0, 1) for diff in report["golden"].values()), report["golden"]
    predictions = predict_files(None, pictures)
    expected = {Path(p.path).name: p.classes[0][0] for p in predictions}
    assert {Path(r["file"]).name: r["top1"] for r in report["results"]} == expected
    # the page shows the superclass of its answer, as `cifarkit predict` names it (none for "none of these")
    assert {Path(r["file"]).name: r["superclass"] for r in report["results"]} == {
        Path(p.path).name: f"superclass: {p.superclass}" if p.known is not False else None for p in predictions}
    # ...and says "none of the classes" where `cifarkit predict` does: the same outlier score (the web model's
    # float16 weights move it by at most 0.05, or 1% of it far from the threshold: the score counts spreads of its
    # parts, and resnetd-wide-cifar100's 9.80 for a picture read 9.75 in the page) and the same verdict away from
    # the threshold
    from cifarkit.loading import load_pretrained

    threshold = load_pretrained().outlier["threshold"]
    page = {Path(r["file"]).name: r for r in report["results"]}
    for p in predictions:
        shown = page[Path(p.path).name]
        assert abs(shown["outlierScore"] - p.outlier_score) < max(0.05, 0.01 * abs(p.outlier_score)), (
            p.path, shown, p.outlier_score)
        if abs(p.outlier_score - threshold) > 0.05:
            assert shown["known"] is p.known, (p.path, shown, p.outlier_score)
            assert (shown["verdict"] or "").startswith("None of the 100 classes") is (not p.known)
    assert any(p.known is False for p in predictions) and any(p.known for p in predictions)
    assert page[wheel.name]["verdict"].startswith("None of the 100 classes")  # as Python and Node.js say


@needs_browser
def test_the_page_teaches_new_classes_like_the_python_side(tmp_path):
    """Teach mode in Chromium: two classes of real pictures taught in the page; its answers, and the head it lets
    you download, agree with `cifarkit predict --head` on the same pictures; the head loads again after a reload."""
    from cifarkit.predict import predict_files
    from cifarkit.serve import WebServer
    from cifarkit.teach import load_head
    from tests.test_teach import _image_folder

    folder = _image_folder(tmp_path / "pictures", per_class=12)
    (folder / "cat" / "notes.txt").unlink()  # the page's file picker offers pictures only
    checks = sorted((folder / "cat").glob("*.png"))[-3:] + sorted((folder / "ship").glob("*.png"))[-3:]
    with WebServer(None, WEB / "dist", port=0, samples=0) as web:
        thread = threading.Thread(target=web.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{web.address[1]}/"
            result = subprocess.run(["node", "e2e/teach.mjs", url, str(folder / "cat"), str(folder / "ship"),
                                     str(tmp_path / "head.json"), *map(str, checks)],
                                    cwd=WEB, capture_output=True, text=True, timeout=600)
        finally:
            web.server.shutdown()
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "error" not in report and not report["pageErrors"], report
    assert report["status"].startswith("Taught 2 classes") and "pictures it kept aside" in report["status"]
    assert report["taught"] == "cat\nship" and report["counts"] == ["12 pictures", "12 pictures"]  # picked, dropped
    from cifarkit.loading import load_pretrained

    head = load_head(tmp_path / "head.json", load_pretrained().feature_fingerprint)  # a valid head for this model
    assert head["labels"] == ["cat", "ship"] and head["examples"] == {"cat": 12, "ship": 12}
    python = {Path(p.path).name: p.classes[0][0] for p in predict_files(None, checks, head=tmp_path / "head.json")}
    assert {Path(r["file"]).name: r["top1"] for r in report["results"]} == python
    assert report["reloaded"] == report["results"]  # the downloaded head, loaded again after a reload
    assert all(r["top1"] not in ("cat", "ship") for r in report["forgotten"])  # back to the 100 classes
