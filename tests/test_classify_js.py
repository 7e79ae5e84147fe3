"""The TypeScript library (web/packages/classify) against the Python side, and as a user installs it:
cross-language parity of `cifarkit-classify` with `cifarkit predict`, its errors, and `npm pack` installed into
a fresh project that type-checks with `tsc --strict` and runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.iccprofile import add_colour_managed_pictures

WEB = Path(__file__).resolve().parents[1] / "web"
PACKAGE = WEB / "packages" / "classify"
CLI = PACKAGE / "dist" / "cli.js"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not CLI.is_file() or not (WEB / "node_modules" / "sharp").is_dir(),
    reason="needs node and the built library (cd web && npm ci && npm run build)")


def node_classify(*args: str, cwd: Path = PACKAGE) -> subprocess.CompletedProcess:
    return subprocess.run(["node", str(CLI), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    """Real CIFAR-100 test pictures (the shipped model's dataset) where the copy is here, else real CIFAR-10
    ones, else generated ones; and photos of other sizes and formats made from them: JPEG, WebP, GIF, RGBA PNG
    with transparency, grey PNG, an EXIF-rotated JPEG."""
    import pickle

    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    for env, test_file in (("CIFARKIT_TEST_CIFAR100", "cifar-100-python/test"),
                           ("CIFARKIT_TEST_CIFAR10", "cifar-10-batches-py/test_batch")):
        real = os.environ.get(env)
        if real and (Path(real) / test_file).is_file():
            with open(Path(real) / test_file, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            images = batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)[:24]
            break
    for i, image in enumerate(images[:16]):
        Image.fromarray(image).save(folder / f"test{i:02d}.png")
    photo = Image.fromarray(images[16]).resize((243, 181), Image.BICUBIC)
    photo.save(folder / "photo.jpg", quality=90)
    photo.save(folder / "photo.webp", quality=90)
    photo.convert("P").save(folder / "photo.gif")
    rgba = np.asarray(Image.fromarray(images[17]).resize((80, 96)).convert("RGBA")).copy()
    rgba[:40, :, 3] = 120
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(images[18]).convert("L").resize((64, 40)).save(folder / "grey.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    Image.fromarray(images[19]).resize((60, 45)).save(folder / "rotated.jpg", exif=exif, quality=95)
    add_colour_managed_pictures(folder, images[20:24])
    return folder


def shipped_tolerance() -> float:
    """How far the shipped web model's probabilities may be from the Python model's: 1e-4 for a float32 export;
    for one with float16 weights (the default model's, folded BatchNorm included), its export's measured
    difference from the float32 graph, with room."""
    quantization = json.loads((WEB / "public" / "model" / "model.json").read_text()).get("quantization")
    return 1e-4 if not quantization else max(1e-4, 4 * quantization["max_abs_difference_from_float"])


def colour_wheel(path: Path, size: int = 256) -> Path:
    """Hue around, saturation outwards, on white: a picture of none of CIFAR-100's classes."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    radius, hue = np.hypot(x, y), (np.arctan2(y, x) / (2 * np.pi)) % 1
    sector, fraction = np.floor(hue * 6), hue * 6 - np.floor(hue * 6)
    s = np.clip(radius, 0, 1)
    p, q, t = 1 - s, 1 - s * fraction, 1 - s * (1 - fraction)
    table = [(1, t, p), (q, 1, p), (p, 1, t), (p, q, 1), (t, p, 1), (1, p, q)]  # HSV -> RGB with value 1
    rgb = np.ones((size, size, 3))
    for k, channels in enumerate(table):
        mask = (sector == k) & (radius <= 1)
        for c in range(3):
            rgb[..., c][mask] = (channels[c] * np.ones_like(radius))[mask] if np.ndim(channels[c]) else channels[c]
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)
    return path


def test_node_library_matches_cifarkit_predict(pictures):
    from cifarkit.loading import load_pretrained
    from cifarkit.predict import format_predictions, predict_files

    threshold = load_pretrained().outlier["threshold"]

    python = json.loads(format_predictions(predict_files(None, [pictures], top_k=5), "json"))
    result = node_classify("--format", "json", "--top-k", "5", str(pictures))
    assert result.returncode == 0, result.stderr
    node = json.loads(result.stdout)
    assert [r["path"] for r in node] == [r["path"] for r in python] and len(node) == 26
    for py, js in zip(python, node, strict=True):
        assert set(js) == set(py) == {"path", "error", "superclass", "top", "known", "outlier_score"}  # one shape
        assert js["superclass"] == py["superclass"] and py["superclass"]  # the CIFAR-100 model has them
        # colour management (lcms2 in both, different code around it) may move a sample by one level in about
        # 1% of a picture's values: the answer is the same, the scores equal to a few thousandths
        managed = Path(py["path"]).name.startswith("p3")
        tolerance = shipped_tolerance()
        if not managed and tolerance == 1e-4:  # with float16 weights near-ties may swap below the top-1
            assert [t["class"] for t in js["top"]] == [t["class"] for t in py["top"]], py["path"]
        assert js["top"][0]["class"] == py["top"][0]["class"], py["path"]
        for a, b in zip(py["top"], js["top"], strict=True):
            assert set(a) == set(b) == {"class", "probability"}
            assert abs(a["probability"] - b["probability"]) < (5e-3 if managed else tolerance), py["path"]
        # "none of these": the same outlier score (a max logit: float16 weights move it by hundredths at most)
        # and the same verdict wherever the score is not within that of the threshold
        assert abs(js["outlier_score"] - py["outlier_score"]) < 0.05, py["path"]
        if abs(py["outlier_score"] - threshold) > 0.05:
            assert js["known"] is py["known"], py["path"]
    assert any(r["known"] for r in python)  # the model's own kind of picture is known


def test_none_of_these_reads_the_same_in_python_and_node(tmp_path):
    """Pictures of none of the classes (a colour wheel, which the features alone take for an apple, and a colour
    gradient) say so in the table, with the same closest class, in both."""
    from cifarkit.predict import format_predictions, predict_files

    wheel = colour_wheel(tmp_path / "wheel.png")
    ramp = np.linspace(0, 255, 64)
    gradient = np.stack([*np.meshgrid(ramp, ramp), np.full((64, 64), 80.0)], axis=-1).astype(np.uint8)
    Image.fromarray(gradient).save(tmp_path / "gradient.png")
    files = [wheel, tmp_path / "gradient.png"]
    python = format_predictions(predict_files(None, files, top_k=3), "table")
    result = node_classify("--top-k", "3", *map(str, files))
    assert result.returncode == 0, result.stderr
    assert python.splitlines()[0].startswith(f"{wheel}: none of the 100 classes (closest: ")
    for py, js in zip(python.splitlines(), result.stdout.splitlines(), strict=True):
        # the same verdict and the same closest class (the percentages differ by the web model's float16 weights)
        assert ("none of the 100 classes" in py) == ("none of the 100 classes" in js)
        assert py.split("%")[0].rsplit(" ", 1)[0] == js.split("%")[0].rsplit(" ", 1)[0]


def test_cli_reports_each_bad_file_and_goes_on(pictures, tmp_path):
    (tmp_path / "text.png").write_text("not a picture")
    (tmp_path / "empty.jpg").write_bytes(b"")
    good = pictures / "test00.png"
    result = node_classify(str(good), str(tmp_path / "text.png"), str(tmp_path / "empty.jpg"),
                           str(tmp_path / "missing.png"))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith(f"{good}: ") and "%" in lines[0]
    assert "ERROR" in lines[1] and "not an image" in lines[1]
    assert "empty file" in lines[2] and "no such file" in lines[3]
    assert "3 of 4 files could not be classified" in result.stderr and "at " not in result.stderr  # no stack trace
    csv = node_classify("--format", "csv", "-k", "2", str(good))
    header = "path,rank,class,probability,superclass,error,known,outlier_score"
    assert csv.returncode == 0 and csv.stdout.splitlines()[0] == header
    assert len(csv.stdout.strip().splitlines()) == 3
    for bad in (["--top-k", "0", str(good)], ["--format", "xml", str(good)], []):
        result = node_classify(*bad)
        assert result.returncode == 2 and result.stderr.startswith("cifarkit-classify: error:")


def test_cli_refuses_a_model_that_is_not_a_cifarkit_export(tmp_path, pictures):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, tmp_path / "other.onnx")
    import hashlib

    info = json.loads((WEB / "public" / "model" / "model.json").read_text())
    info["model_sha256"] = hashlib.sha256((tmp_path / "other.onnx").read_bytes()).hexdigest()  # intact, but alien
    (tmp_path / "other.json").write_text(json.dumps(info))
    result = node_classify("--model", str(tmp_path / "other.onnx"), str(pictures / "test00.png"))
    assert result.returncode == 1
    assert "not a cifarkit export" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = node_classify("--model", str(tmp_path / "missing.onnx"), str(pictures / "test00.png"))
    assert result.returncode == 1 and "no such file" in result.stderr


@pytest.mark.slow
def test_packed_library_installs_type_checks_and_runs(tmp_path, pictures):
    """As a user meets it: npm pack, install the tarball into a fresh project, an ESM TypeScript file checked
    with tsc --strict, run it, and run the installed CLI."""
    packed = subprocess.run(["npm", "pack", "--pack-destination", str(tmp_path), "--json"], cwd=PACKAGE,
                            capture_output=True, text=True, timeout=300)
    assert packed.returncode == 0, packed.stderr
    tarball = tmp_path / json.loads(packed.stdout)[0]["filename"]
    files = {f["path"] for f in json.loads(packed.stdout)[0]["files"]}
    assert {"dist/node.js", "dist/node.d.ts", "dist/browser.js", "dist/cli.js", "model/model.onnx",
            "README.md"} <= files
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text(json.dumps({"name": "app", "private": True, "type": "module"}))
    # as a user runs it: no ONNXRUNTIME_NODE_INSTALL. --prefer-offline: the packages come from npm's cache where
    # `npm ci` in web/ put them; what a fresh cache lacks (`npm ci` stores tarballs, not the registry's version
    # lists that resolving a range needs) comes from the npm registry. onnxruntime-node, whose install script
    # fetches from outside the registry, must not be installed at all (asserted below).
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("ONNXRUNTIME", "NPM_CONFIG_ONNX"))}
    install = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefer-offline", str(tarball)],
                             cwd=app, capture_output=True, text=True, timeout=600, env=env)
    assert install.returncode == 0, install.stderr[-3000:]
    # onnxruntime-node is an optional peer: not installed, so the library runs onnxruntime-web's WebAssembly
    assert not (app / "node_modules" / "onnxruntime-node").exists()
    (app / "main.ts").write_text(
        'import { loadClassifier, NotAnImageError, type Classification } from "@cifarkit/classify";\n'
        "const classifier = await loadClassifier();\n"
        f"const results: Classification[] = await classifier.classify({json.dumps(str(pictures / 'photo.jpg'))}, "
        "{ topK: 3 });\n"
        f"const many: Classification[][] = await classifier.classify([{json.dumps(str(pictures / 'grey.png'))}], "
        "{ topK: 1 });\n"
        'const bad = await classifier.classify(new Uint8Array([1, 2, 3])).catch((e: unknown) => e);\n'
        "console.log(JSON.stringify({ results, many, bad: bad instanceof NotAnImageError }));\n")
    (app / "tsconfig.json").write_text(json.dumps({"compilerOptions": {
        "strict": True, "module": "NodeNext", "moduleResolution": "NodeNext", "target": "ES2022", "outDir": "out",
        "types": ["node"], "skipLibCheck": False}, "files": ["main.ts"]}))
    if not (app / "node_modules" / "@types" / "node").is_dir():  # the app's own dev dependency, offline
        shutil.copytree(WEB / "node_modules" / "@types" / "node", app / "node_modules" / "@types" / "node")
    tsc = subprocess.run(["node", str(WEB / "node_modules" / "typescript" / "bin" / "tsc"), "-p", "."], cwd=app,
                         capture_output=True, text=True, timeout=300)
    assert tsc.returncode == 0, tsc.stdout + tsc.stderr
    run = subprocess.run(["node", "out/main.js"], cwd=app, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(out["results"]) == 3 and out["results"][0]["score"] > out["results"][2]["score"] and out["bad"]
    assert len(out["many"]) == 1 and len(out["many"][0]) == 1
    cli = subprocess.run([str(app / "node_modules" / ".bin" / "cifarkit-classify"), "--format", "json",
                          str(pictures / "test00.png")], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert [set(t) for t in json.loads(cli.stdout)[0]["top"]] == [{"class", "probability"}] * 5


def test_python_and_node_give_one_verdict_on_model_metadata(tmp_path):
    """serve-web (Python) and @cifarkit/classify (Node.js, the page) refuse the same model.json files, for the same
    reasons: one schema, one set of rules."""
    from cifarkit.export_metadata import metadata_problems

    shipped = json.loads((WEB / "public" / "model" / "model.json").read_text())
    cases = {
        "shipped": json.dumps(shipped), "version-null": json.dumps({**shipped, "version": None}),
        "version-3": json.dumps({**shipped, "version": 3}), "version-1": json.dumps({**shipped, "version": 1}),
        "fingerprint-short": json.dumps({**shipped, "features": {**shipped["features"], "fingerprint": "ab"}}),
        "threshold-text": json.dumps({**shipped, "outlier": {**shipped["outlier"], "threshold": "low"}}),
        "outlier-misnamed": json.dumps({**shipped, "outlier": {**shipped["outlier"], "name": "x"}}),
        "bom": "\ufeff" + json.dumps(shipped),
        "numeric-dataset": json.dumps({**shipped, "dataset": 100}),
        "no-model-file": json.dumps({k: v for k, v in shipped.items() if k != "model_file"}),
        "no-sha256": json.dumps({k: v for k, v in shipped.items() if k != "model_sha256"}),
        "short-superclass-map": json.dumps({**shipped, "fine_to_coarse": shipped["fine_to_coarse"][:50]}),
        "superclass-out-of-range": json.dumps({**shipped, "fine_to_coarse": [99] * 100}),
        "proto": json.dumps(shipped)[:-1] + ', "__proto__": {"polluted": true}}',
        "temperature-text": json.dumps({**shipped, "temperature": "abc"}),
        "temperature-negative": json.dumps({**shipped, "temperature": -1}),
        "name-not-text": json.dumps({**shipped, "classes": [7, *shipped["classes"][1:]]}),
        "not-an-object": "[]", "no-version": json.dumps({k: v for k, v in shipped.items() if k != "version"}),
    }
    for name, text in cases.items():
        (tmp_path / f"{name}.json").write_bytes(text.encode())

    def python_verdict(path: Path) -> bool:
        try:
            return not metadata_problems(json.loads(path.read_bytes().decode("utf-8")))
        except ValueError:  # not JSON (a BOM, say): refused as serve-web's reader refuses it
            return False

    script = ("import {checkModelInfo, parseModelInfo} from " + json.dumps((PACKAGE / "dist" / "core.js").as_uri())
              + "; import {readFileSync} from 'node:fs'; const out = {};"
              + " for (const f of process.argv.slice(1)) { try { checkModelInfo(parseModelInfo(readFileSync(f), f), f);"
              + " out[f] = true; } catch (e) { out[f] = e.name === 'ModelLoadError' ? false : String(e); } }"
              + " console.log(JSON.stringify(out));")
    files = [str(tmp_path / f"{name}.json") for name in cases]
    result = subprocess.run(["node", "--input-type=module", "-e", script, *files], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    node = json.loads(result.stdout)
    python = {f: python_verdict(Path(f)) for f in files}
    assert node == python
    accepted = {Path(f).stem for f, ok in python.items() if ok}
    assert accepted == {"shipped", "no-version", "version-1"}


def test_fit_crop_gives_one_answer_in_python_and_node(pictures):
    from cifarkit.predict import format_predictions, predict_files

    files = [str(pictures / name) for name in ("photo.jpg", "rgba.png", "grey.png", "rotated.jpg")]
    python = json.loads(format_predictions(predict_files(None, files, top_k=3, fit="crop"), "json"))
    result = node_classify("--format", "json", "--top-k", "3", "--fit", "crop", *files)
    assert result.returncode == 0, result.stderr
    for py, js in zip(python, json.loads(result.stdout), strict=True):
        assert js["top"][0]["class"] == py["top"][0]["class"], py["path"]
        for a, b in zip(py["top"], js["top"], strict=True):
            assert abs(a["probability"] - b["probability"]) < shipped_tolerance()
    squashed = json.loads(format_predictions(predict_files(None, files, top_k=3), "json"))
    assert [p["top"] for p in squashed] != [p["top"] for p in python]  # the option does change what is seen
    bad = node_classify("--fit", "stretch", files[0])
    assert bad.returncode == 2 and "--fit must be squash or crop" in bad.stderr
