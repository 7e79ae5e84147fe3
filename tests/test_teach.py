"""Teaching new classes: the head's fit (deterministic, held-out choice, nearest class mean for 1-2 pictures), one
head in Python and Node.js from the same features, the two command lines end to end on real pictures, and bad
input (too few or too many classes, an empty class, a head from another model, a tampered head)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarkit.teach import (
    HEAD_FORMAT,
    TeachError,
    fit_head,
    head_probabilities,
    head_problem,
    held_out_mask,
    load_head,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "web" / "packages" / "classify"
CLI = PACKAGE / "dist" / "cli.js"
needs_node = pytest.mark.skipif(shutil.which("node") is None or not CLI.exists(),
                                reason="Node.js or the built @cifarkit/classify is not here (cd web && npm run build)")
FINGERPRINT = "ab" * 32


def _blobs(per_class: int, classes: int = 3, d: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, d))
    features = np.concatenate([centres[c] + rng.normal(0, 1, (per_class, d)) for c in range(classes)])
    labels = [name for name in ("bee", "cup", "owl")[:classes] for _ in range(per_class)]
    return features.astype(np.float32), labels


def test_the_fit_is_deterministic_picks_its_penalty_on_held_out_pictures_and_separates_the_classes():
    features, labels = _blobs(20)
    head = fit_head(features, labels, FINGERPRINT)
    assert head == fit_head(features, labels, FINGERPRINT)  # the same head on every run
    assert head["format"] == HEAD_FORMAT and head["method"] == "softmax" and head["labels"] == ["bee", "cup", "owl"]
    assert head["held_out"]["images"] == 12 and head["held_out"]["accuracy"] > 0.9
    assert head_problem(head, FINGERPRINT) is None
    predicted = [head["labels"][k] for k in head_probabilities(head, features).argmax(1)]
    assert np.mean([p == t for p, t in zip(predicted, labels, strict=True)]) > 0.95


def test_every_fifth_picture_of_each_class_is_held_out():
    assert held_out_mask(np.array([0, 1, 0, 0, 0, 0, 1, 1, 1, 1])).tolist() == [
        False, False, False, False, False, True, False, False, False, True]


def test_one_or_two_pictures_per_class_fall_back_to_the_nearest_class_mean():
    features, labels = _blobs(2)
    head = fit_head(features, labels, FINGERPRINT)
    assert head["method"] == "nearest-class-mean" and head["held_out"] is None
    z = (features - np.array(head["standardize"]["mean"])) / np.array(head["standardize"]["scale"])
    means = np.stack([z[np.array(labels) == name].mean(0) for name in head["labels"]])
    nearest = ((z[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (head_probabilities(head, features).argmax(1) == nearest).all()


@pytest.mark.parametrize("labels, message", [
    (["cat"] * 4, "at least 2 classes"),
    ([f"c{i}" for i in range(101)], "at most 100"),
    (["cat", "cat", " ", " "], "non-empty"),
])
def test_examples_that_cannot_teach_are_one_clear_error(labels, message):
    with pytest.raises(TeachError, match=message):
        fit_head(np.zeros((len(labels), 4), np.float32), labels, FINGERPRINT)


def test_a_tampered_head_is_refused_with_what_is_wrong(tmp_path):
    features, labels = _blobs(6)
    head = fit_head(features, labels, FINGERPRINT)
    cases = {
        "another model": ({**head}, "another model"),
        "label count": ({**head, "labels": head["labels"][:2]}, "shape"),
        "duplicate labels": ({**head, "labels": ["bee", "bee", "owl"]}, "repeat"),
        "nan weight": ({**head, "weights": [[float("nan")] * 8] * 3}, "finite"),
        "format": ({**head, "format": "x"}, "not a cifarkit head"),
        "temperature": ({**head, "temperature": 0}, "temperature"),
    }
    for name, (bad, message) in cases.items():
        fingerprint = "cd" * 32 if name == "another model" else FINGERPRINT
        assert message in head_problem(bad, fingerprint), name
    path = tmp_path / "head.json"
    path.write_text(json.dumps(head)[:200])  # truncated
    with pytest.raises(TeachError):
        load_head(path, FINGERPRINT)


def _node(*args, cwd=None):
    return subprocess.run(["node", str(CLI), *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd)


@needs_node
def test_python_and_node_fit_one_head_from_the_same_features(tmp_path):
    """The same features in, the same head out (up to the optimisers' tolerance), and the same answers."""
    rng = np.random.default_rng(4)
    features, labels = _blobs(15, d=32)
    features += rng.normal(0, 2.0, features.shape).astype(np.float32)  # overlapping classes: the penalty matters
    (tmp_path / "in.json").write_text(json.dumps({"features": features.tolist(), "labels": labels}))
    script = ("import {fitHead} from " + json.dumps((PACKAGE / "dist" / "teach.js").as_uri()) + ";"
              "import {readFileSync} from 'node:fs';"
              "const {features, labels} = JSON.parse(readFileSync(process.argv[1], 'utf8'));"
              f"console.log(JSON.stringify(fitHead(features, labels, {json.dumps(FINGERPRINT)})));")
    result = subprocess.run(["node", "--input-type=module", "-e", script, str(tmp_path / "in.json")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    node = json.loads(result.stdout)
    python = fit_head(features, labels, FINGERPRINT)
    assert node["labels"] == python["labels"] and node["regularization"] == python["regularization"]
    assert node["held_out"]["accuracy"] == python["held_out"]["accuracy"]
    assert np.abs(np.array(node["weights"]) - np.array(python["weights"])).max() < 1e-3
    assert abs(node["temperature"] - python["temperature"]) < 1e-3 * python["temperature"]
    probe = rng.normal(0, 3, (200, 32))
    assert (head_probabilities(node, probe).argmax(1) == head_probabilities(python, probe).argmax(1)).all()
    assert np.abs(head_probabilities(node, probe) - head_probabilities(python, probe)).max() < 5e-3


def _image_folder(root: Path, per_class: int = 10) -> Path:
    """Two classes of real CIFAR-10 test pictures (cat, ship) where the copy is here, else two colour classes."""
    import pickle

    real = os.environ.get("CIFARKIT_TEST_CIFAR10")
    test = Path(real or "/nonexistent") / "cifar-10-batches-py" / "test_batch"
    if test.is_file():
        with open(test, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images = batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.array(batch[b"labels"])
        picks = {"cat": images[labels == 3][:per_class], "ship": images[labels == 8][:per_class]}
    else:
        rng = np.random.default_rng(0)
        picks = {name: np.clip(rng.normal(colour, 30, (per_class, 32, 32, 3)), 0, 255).astype(np.uint8)
                 for name, colour in (("cat", (200, 60, 40)), ("ship", (40, 80, 200)))}
    for name, images in picks.items():
        (root / name).mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(root / name / f"{i:03d}.png")
    (root / "cat" / "notes.txt").write_text("not a picture")
    return root


@needs_node
def test_teach_and_predict_with_a_head_in_python_and_node(tmp_path):
    from cifarkit.cli import main
    from cifarkit.predict import format_predictions, predict_files

    folder = _image_folder(tmp_path / "pictures")
    assert main(["teach", str(folder), "--out", str(tmp_path / "py.json")]) == 0
    node = _node("teach", folder, "--out", tmp_path / "js.json")
    assert node.returncode == 0, node.stderr
    assert "skipped" in node.stdout and "notes.txt" in node.stdout
    assert "taught 2 classes (cat 10, ship 10)" in node.stdout
    py_head, js_head = (json.loads((tmp_path / f"{s}.json").read_text()) for s in ("py", "js"))
    assert py_head["labels"] == js_head["labels"] == ["cat", "ship"] and py_head["held_out"] == pytest.approx(
        js_head["held_out"], abs=1e-3)
    pictures = sorted((folder / "cat").glob("*.png"))[:4] + sorted((folder / "ship").glob("*.png"))[:4]
    python = json.loads(format_predictions(predict_files(None, pictures, top_k=2, head=tmp_path / "py.json"), "json"))
    for head in ("py.json", "js.json"):  # each side reads the other's head
        result = _node("--head", tmp_path / head, "--format", "json", "-k", "2", *pictures)
        assert result.returncode == 0, result.stderr
        for a, b in zip(python, json.loads(result.stdout), strict=True):
            assert a["top"][0]["class"] == b["top"][0]["class"]
            assert abs(a["top"][0]["probability"] - b["top"][0]["probability"]) < 0.02
            assert b["known"] is None and b["superclass"] is None
    assert sum(r["top"][0]["class"] == Path(r["path"]).parent.name for r in python) >= 6


@needs_node
def test_teaching_bad_folders_and_heads_is_one_line_on_both_sides(tmp_path):
    from cifarkit.cli import main

    one = tmp_path / "one" / "cat"
    one.mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 0, 0)).save(one / "a.png")
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    (empty / "dog").mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 0, 0)).save(empty / "cat" / "a.png")
    for folder, message in ((tmp_path / "one", "at least 2"), (empty, "has no pictures")):
        node = _node("teach", folder, "--out", tmp_path / "h.json")
        assert node.returncode == 1 and message in node.stderr and "    at " not in node.stderr, node.stderr
        assert main(["teach", str(folder), "--out", str(tmp_path / "h.json")]) == 1
    assert not (tmp_path / "h.json").exists()  # nothing half-written
    head = fit_head(*_blobs(5, classes=2, d=256), "cd" * 32)  # taught on "another model"
    (tmp_path / "other.json").write_text(json.dumps(head))
    Image.new("RGB", (32, 32), (0, 200, 0)).save(tmp_path / "p.png")
    node = _node("--head", tmp_path / "other.json", tmp_path / "p.png")
    assert node.returncode == 1 and "another model" in node.stderr
    (tmp_path / "cut.json").write_text(json.dumps(head)[:300])
    node = _node("--head", tmp_path / "cut.json", tmp_path / "p.png")
    assert node.returncode == 1 and "not a readable head file" in node.stderr
