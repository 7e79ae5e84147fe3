"""Using a trained model: evaluate, predict, export to ONNX, plot -- and every bad input."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from cifarkit.cli import main
from cifarkit.config import load_config
from cifarkit.data import load_dataset
from cifarkit.errors import CheckpointError, ImageError
from cifarkit.evaluate import evaluate_checkpoint, expected_calibration_error
from cifarkit.images import load_image
from cifarkit.loading import load_trained_model
from cifarkit.predict import predict_files
from cifarkit.train import train
from cifarkit.train.checkpoint import load_checkpoint
from tests.conftest import QUICK


@pytest.fixture(scope="module")
def trained_cifar100(tmp_path_factory, fake_root):
    out = tmp_path_factory.mktemp("use100")
    train(load_config("elu-seed", [*QUICK, "data.dataset=cifar100", "data.val_per_class=1",
                                   f"data.data_dir={json.dumps(str(fake_root))}",
                                   f"train.out_dir={json.dumps(str(out))}"]), log=lambda _: None)
    return out / "run"


def _test_images(run):
    trained = load_trained_model(run)
    data = load_dataset(trained.data.dataset, trained.data.data_dir, download=False)
    return trained, data


def test_report_agrees_with_a_direct_computation(trained_run, tmp_path):
    report = evaluate_checkpoint(trained_run, "test", out_dir=tmp_path)
    trained, data = _test_images(trained_run)
    with torch.no_grad():
        x = trained.preprocess(torch.from_numpy(data.test_images).permute(0, 3, 1, 2))
        logits = trained.model(x)
    labels = torch.from_numpy(data.test_labels)
    assert report["top1"] == pytest.approx((logits.argmax(1) == labels).double().mean().item(), abs=1e-12)
    assert report["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-4)
    top5 = logits.topk(5, 1).indices
    assert report["top5"] == pytest.approx((top5 == labels[:, None]).any(1).float().mean().item())
    matrix = np.asarray(report["confusion_matrix"])
    assert matrix.sum() == len(labels) and np.trace(matrix) == (logits.argmax(1) == labels).sum().item()
    for c, name in enumerate(trained.classes):
        mask = labels == c
        expected = (logits.argmax(1)[mask] == c).float().mean().item()
        assert report["per_class_accuracy"][name] == pytest.approx(expected)
    assert report["checkpoint_sha256"] == trained.sha256 and report["config"]["model"]["name"] == "airbench"
    assert results_test_top1(trained_run) == pytest.approx(report["top1"])  # training's own test figure
    for name in ("confusion.csv", "confusion.png", "reliability.png", "report.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "report.json").read_text())["top1"] == report["top1"]


def results_test_top1(run):
    return json.loads((run / "results.json").read_text())["test"]["top1"]


def test_expected_calibration_error_by_hand():
    confidence = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([True, False, True, True])
    ece, bins = expected_calibration_error(confidence, correct, bins=10)
    # bin (0.9, 1]: accuracy 0.5 vs confidence 0.95; bin (0.5, 0.6]: 1.0 vs 0.55; each half the images
    assert ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
    assert [b["count"] for b in bins] == [2, 2]


def test_superclass_view_for_cifar100(trained_cifar100, tmp_path):
    report = evaluate_checkpoint(trained_cifar100, "val", out_dir=tmp_path)
    trained, data = _test_images(trained_cifar100)
    assert len(report["superclass"]["per_class_accuracy"]) == 20
    assert report["superclass"]["top1"] >= report["top1"]  # a right fine class is a right superclass


def test_predict_matches_evaluate_on_the_same_images(trained_run, tmp_path):
    trained, data = _test_images(trained_run)
    for i in range(40):
        Image.fromarray(data.test_images[i]).save(tmp_path / f"{i:03d}.png")
    results = predict_files(trained_run, [tmp_path], top_k=3)
    probabilities = trained.probabilities(torch.from_numpy(data.test_images[:40]).permute(0, 3, 1, 2))
    expected = [trained.classes[c] for c in probabilities.argmax(1).tolist()]
    assert [r.classes[0][0] for r in results] == expected
    assert all(len(r.classes) == 3 and r.error is None for r in results)


def test_predict_cifar100_names_the_superclass(trained_cifar100, tmp_path):
    Image.new("RGB", (50, 40), (200, 30, 30)).save(tmp_path / "red.png")
    [result] = predict_files(trained_cifar100, [tmp_path / "red.png"])
    assert result.superclass is not None and result.superclass.startswith("super")


def _write_bad_files(folder):
    (folder / "notes.txt").write_text("not a picture")
    good = folder / "good.png"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(good)
    (folder / "truncated.png").write_bytes(good.read_bytes()[:60])
    Image.new("1", (10_000, 10_000)).save(folder / "bomb.png")  # 100 megapixels in a few kB
    return good


def test_predict_reports_bad_files_and_classifies_the_rest(trained_run, tmp_path, capsys):
    good = _write_bad_files(tmp_path)
    files = [tmp_path / "notes.txt", good, tmp_path / "truncated.png", tmp_path / "bomb.png", tmp_path / "nope.png"]
    results = {r.path.rsplit("/", 1)[-1]: r for r in predict_files(trained_run, files)}
    assert results["good.png"].error is None and results["good.png"].classes
    assert "not an image" in results["notes.txt"].error
    assert "truncated or corrupt" in results["truncated.png"].error
    assert "decompression bomb" in results["bomb.png"].error
    assert "no such file" in results["nope.png"].error
    code = main(["predict", str(trained_run), *map(str, files), "--format", "json"])
    captured = capsys.readouterr()
    assert code == 1 and "4 of 5 files could not be classified" in captured.err and "Traceback" not in captured.err
    assert len(json.loads(captured.out)) == 5


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_predict_formats(trained_run, tmp_path, capsys, fmt):
    Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "a.png")
    assert main(["predict", str(trained_run / "best.pt"), str(tmp_path / "a.png"), "--format", fmt, "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "a.png" in out
    if fmt == "csv":
        assert out.splitlines()[0].startswith("path,rank,class,probability") and len(out.splitlines()) == 3


def test_image_modes_are_normalized(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(load_image(tmp_path / "rgb.png"), rgb)  # 32x32 RGB passes through untouched
    rgba = np.dstack([rgb, np.full((32, 32), 0, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    assert (load_image(tmp_path / "clear.png") == 255).all()  # transparent -> white background
    Image.fromarray(rgb[:, :, 0], "L").save(tmp_path / "grey.png")
    grey = load_image(tmp_path / "grey.png")
    assert np.array_equal(grey[:, :, 0], rgb[:, :, 0]) and np.array_equal(grey[:, :, 1], grey[:, :, 2])
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    assert load_image(tmp_path / "palette.png").shape == (32, 32, 3)
    sixteen = (rgb[:, :, 1].astype(np.uint16) * 257)
    deep = Image.fromarray(sixteen)
    assert deep.mode.startswith("I;16")
    deep.save(tmp_path / "deep.png")
    assert np.array_equal(load_image(tmp_path / "deep.png")[:, :, 0], rgb[:, :, 1])
    # A 1-pixel checkerboard shrunk 8x: an antialiased filter averages it to grey (nearest-neighbour
    # sampling would keep black and white).
    checker = ((np.indices((256, 256)).sum(0) % 2) * 255).astype(np.uint8)
    Image.fromarray(checker, "L").save(tmp_path / "checker.png")
    assert np.abs(load_image(tmp_path / "checker.png").astype(int) - 127.5).max() < 3


def test_exif_orientation_is_applied(tmp_path):
    picture = np.zeros((32, 64, 3), np.uint8)
    picture[:, :32] = (255, 0, 0)  # left half red, right half blue
    picture[:, 32:] = (0, 0, 255)
    image = Image.fromarray(picture)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    out = load_image(tmp_path / "rotated.jpg").astype(int)
    # Displayed upright, the red half is on top.
    assert out[2, 16, 0] > 200 and out[29, 16, 2] > 200


def test_bomb_limit_is_checked_before_decoding(tmp_path):
    Image.new("1", (7_000, 7_000)).save(tmp_path / "bomb.png")  # under Pillow's own limit, over ours
    with pytest.raises(ImageError, match="over the limit"):
        load_image(tmp_path / "bomb.png")


def test_onnx_export_matches_pytorch_on_real_images(trained_run, tmp_path):
    import onnxruntime as ort

    from cifarkit.export import export_onnx

    trained, data = _test_images(trained_run)
    metadata = export_onnx(trained_run, tmp_path / "model.onnx", check_images=data.test_images[:64])
    assert metadata["parity"]["max_abs_difference"] < 1e-4
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    [input_spec] = session.get_inputs()
    assert input_spec.type == "tensor(uint8)" and input_spec.shape[1:] == [32, 32, 3]
    for batch in (1, 7):  # dynamic batch size
        pixels = data.test_images[100:100 + batch]
        got = session.run(None, {"pixels": pixels})[0]
        expected = trained.probabilities(torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy()
        assert got.shape == (batch, 10) and np.abs(got - expected).max() < 1e-4
        assert np.allclose(got.sum(1), 1, atol=1e-5)
    info = json.loads((tmp_path / "model.json").read_text())
    assert info["classes"] == trained.classes and info["source_checkpoint_sha256"] == trained.sha256
    assert info["input"]["dtype"] == "uint8" and info["test"]["top1"] == results_test_top1(trained_run)
    from cifarkit.export_metadata import EXPORT_VERSION, export_schema, schema_problems

    assert info["version"] == EXPORT_VERSION and schema_problems(info, export_schema()) == []
    assert schema_problems({**info, "version": 3, "classes": []}, export_schema()) == [
        "metadata.version must be one of 1, 2, got 3", "metadata.classes needs at least 1 items"]


def test_export_cli_and_bad_output_name(trained_run, tmp_path, capsys):
    assert main(["export", str(trained_run), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert "ONNX Runtime matches PyTorch" in capsys.readouterr().out
    assert main(["export", str(trained_run), "--onnx", str(tmp_path / "m.txt")]) == 1
    assert "should end in .onnx" in capsys.readouterr().err
    assert not (tmp_path / "m.txt").exists() and not list(tmp_path.glob(".export-*"))


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_crafted_checkpoint_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": "cifarkit-checkpoint", "model": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(tmp_path / "evil.pt")
    assert main(["predict", str(tmp_path / "evil.pt"), str(tmp_path)]) == 1
    assert "could run code" in capsys.readouterr().err and not (tmp_path / "pwned").exists()
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2]) + b"garbage")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")


def test_a_version_1_checkpoint_loads_under_todays_names(trained_run, tmp_path):
    """A checkpoint written before the one vocabulary (class_names/coarse_names, no model spec) predicts as it
    did; and using a model reads only its data section and model spec, so a training setting this cifarkit no
    longer knows does not stop it."""
    state = load_checkpoint(trained_run / "best.pt")
    old = {key: value for key, value in state.items() if key not in ("format", "version", "model_spec")}
    old["class_names"], old["coarse_names"] = old.pop("classes"), old.pop("superclasses")
    old["config"] = {**old["config"], "train": {**old["config"]["train"], "a_setting_since_removed": 1}}
    (tmp_path / "old").mkdir()
    torch.save({"format": "cifarkit-checkpoint", "version": 1, **old}, tmp_path / "old" / "best.pt")
    before, after = load_trained_model(trained_run), load_trained_model(tmp_path / "old")
    assert after.classes == before.classes and after.model_spec == before.model_spec
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(after.logits(images), before.logits(images))
    assert "classes" in state and "class_names" not in state and state["model_spec"]["name"] == "airbench"


def test_plot_writes_curves(trained_run, tmp_path, capsys):
    assert main(["plot", str(trained_run), "--out", str(tmp_path / "c.png")]) == 0
    assert Image.open(tmp_path / "c.png").size[0] > 500
    assert main(["plot", str(tmp_path)]) == 1
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_evaluate_cli(trained_run, tmp_path, capsys):
    assert main(["evaluate", str(trained_run), "--split", "val", "--tta", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "val (" in out and "flip TTA" in out and (tmp_path / "report.json").exists()
