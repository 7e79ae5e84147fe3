"""The model that ships with cifarkit: it loads with no dataset and no training, is verified, classifies
any kind of picture, reproduces its card's accuracy, and the page's ONNX copy agrees with it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cifarkit
from cifarkit.cli import main
from cifarkit.pretrained import DEFAULT_PRETRAINED, PRETRAINED, PretrainedError, read_card, shipped_file

WEB_MODEL = Path(__file__).resolve().parents[1] / "web" / "public" / "model"


def test_the_default_model_ships_and_is_listed(capsys):
    assert DEFAULT_PRETRAINED == "resnetd-wide-gpu-refit-cifar100"
    assert set(PRETRAINED) == {"resnetd-wide-gpu-refit-cifar100", "resnetd-wide-refit-cifar100",
                               "resnetd-wide-cifar100", "resnetd-cutmix-cifar100", "resnetd-cifar100",
                               "airbench-cifar100", "airbench-cifar10"}
    card = read_card(DEFAULT_PRETRAINED)
    assert card["dataset"]["name"] == "cifar100" and len(card["classes"]) == 100
    assert card["metrics"]["test"]["top1"] >= 0.76  # the card's promise: 76.16% single view
    assert card["metrics"]["test"]["ece"] <= 0.02 < card["metrics"]["test"]["ece_uncalibrated"]  # calibrated
    assert card["training"]["refit"]["l2"] > 0  # its classifier fitted again (cifarkit refit-head), said on the card
    # the same network as trained, by name: one temperature left its test ECE at 0.023 (label smoothing)
    assert read_card("resnetd-wide-cifar100")["metrics"]["test"]["ece"] <= 0.025
    assert read_card("resnetd-cutmix-cifar100")["metrics"]["test"]["ece"] <= 0.02
    assert read_card("resnetd-cifar100")["metrics"]["test"]["top1"] >= 0.71
    hardware = card["training"]["hardware"]
    assert (hardware.get("gpu") or hardware.get("cpu")) and card["web_model"]["sha256"]  # the card names both
    assert card["training"]["refit"]["hardware"]["cpu"]  # and where the classifier was fitted again
    assert read_card("resnetd-wide-refit-cifar100")["metrics"]["test"]["ece"] <= 0.02  # the default before
    assert read_card("airbench-cifar10")["metrics"]["test"]["top1"] >= 0.90  # still there, by name
    for name in PRETRAINED:
        assert read_card(name)["config"]["data"]["data_dir"] is None  # no machine paths in a shipped card
    assert sum(p.stat().st_size for p in WEB_MODEL.iterdir()) <= 10 * 2**20  # what a browser downloads
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRETRAINED) and f"{card['metrics']['test']['top1']:.2%}" in out


def test_load_pretrained_predicts_paths_pil_images_and_arrays(tmp_path):
    model = cifarkit.load_pretrained()
    assert model.classes[0] == "apple" and not model.model.training and model.temperature != 1.0
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    from_path = model.predict(str(tmp_path / "a.png"))
    from_pil = model.predict(Image.fromarray(array))
    from_array = model.predict(array)
    for other in (from_pil, from_array):  # the same pixels: the same ranking, scores equal to float rounding
        assert [r["label"] for r in other[0]] == [r["label"] for r in from_path[0]]
        assert np.allclose([r["score"] for r in other[0]], [r["score"] for r in from_path[0]], atol=1e-6)
    ranked = from_path[0]
    assert len(ranked) == 5 and [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    assert set(ranked[0]) == {"label", "score", "superclass"} and ranked[0]["label"] in model.classes
    assert ranked[0]["superclass"] == model.superclasses[model.fine_to_coarse[model.classes.index(
        ranked[0]["label"])]]
    cifar10 = cifarkit.load_pretrained("airbench-cifar10")  # no superclasses: no such key
    assert set(cifar10.predict(array)[0][0]) == {"label", "score"} and cifar10.classes[0] == "airplane"
    batch = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)  # NHWC
    assert len(model.predict(batch, top_k=2)) == 3 and all(len(r) == 2 for r in model.predict(batch, top_k=2))
    both = model.predict([tmp_path / "a.png", array])
    assert [r["label"] for r in both[0]] == [r["label"] for r in both[1]] == [r["label"] for r in from_path[0]]


def test_using_a_model_never_imports_the_training_loop(tmp_path):
    Image.new("RGB", (50, 40), (200, 30, 30)).save(tmp_path / "p.png")
    code = ("import sys, cifarkit; m = cifarkit.load_pretrained(); m.predict(sys.argv[1]);"
            "from cifarkit.cli import main; main(['predict', sys.argv[1]]);"
            "print('LOOP' if 'cifarkit.train.loop' in sys.modules else 'NO LOOP')")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.png")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("NO LOOP")


def test_predict_with_no_model_uses_the_shipped_one(tmp_path, capsys):
    Image.new("RGB", (64, 64), (20, 90, 200)).save(tmp_path / "sky.png")
    assert main(["predict", str(tmp_path / "sky.png"), "--format", "json"]) == 0
    first = json.loads(capsys.readouterr().out)[0]
    assert main(["predict", "--model", DEFAULT_PRETRAINED, str(tmp_path / "sky.png"), "--format", "json"]) == 0
    second = json.loads(capsys.readouterr().out)[0]
    assert [c["class"] for c in second["top"]] == [c["class"] for c in first["top"]]
    assert main(["predict", "--model", "airbench-cifar1O", str(tmp_path / "sky.png")]) == 1  # a typo
    err = capsys.readouterr().err
    assert "neither a shipped model (" in err and all(name in err for name in PRETRAINED)


def test_a_damaged_shipped_file_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "pretrained"
    copy.mkdir()
    for ext in ("safetensors", "json"):
        shutil.copy(shipped_file(f"{DEFAULT_PRETRAINED}.{ext}"), copy)
    weights = copy / f"{DEFAULT_PRETRAINED}.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    weights.write_bytes(bytes(data))
    monkeypatch.setattr("cifarkit.pretrained.shipped_file", lambda name: copy / name)
    with pytest.raises(PretrainedError, match="damaged or altered"):
        cifarkit.load_pretrained()
    with pytest.raises(PretrainedError, match="unknown pretrained model 'nope'"):
        cifarkit.load_pretrained("nope")


def test_the_page_model_agrees_with_pytorch():
    import onnxruntime as ort

    metadata = json.loads((WEB_MODEL / "model.json").read_text())
    assert metadata["source_checkpoint"] == DEFAULT_PRETRAINED and metadata["classes"][0] == "apple"
    assert metadata["source_checkpoint_sha256"] == PRETRAINED[DEFAULT_PRETRAINED].weights_sha256
    assert metadata["temperature"] == cifarkit.load_pretrained().temperature  # baked into the graph
    pixels = np.random.default_rng(1).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(WEB_MODEL / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx = session.run(["probabilities"], {"pixels": pixels})[0]
    model = cifarkit.load_pretrained()
    torch_probabilities = model.probabilities(torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy()
    # float16 weights (within 0.3 points of the float model's accuracy, measured at export) or float32
    quantization = metadata.get("quantization")
    tolerance = 1e-4 if not quantization else 4 * quantization["max_abs_difference_from_float"]
    assert quantization is None or abs(quantization["change"]) <= 0.003
    assert np.abs(onnx - torch_probabilities).max() < tolerance


@pytest.mark.realdata
def test_the_card_accuracy_is_reproduced_on_the_real_test_set(real_cifar10_jpeg, tmp_path):
    """The card's figures were measured on the older all-JPEG CIFAR-10 copy: reproduced there."""
    from cifarkit.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint("airbench-cifar10", "test", data_dir=str(real_cifar10_jpeg),
                                 out_dir=tmp_path / "eval")
    card = read_card("airbench-cifar10")
    assert report["top1"] == card["metrics"]["test"]["top1"]  # exactly: the same weights, the same code
    # Not exactly: float32 sums run in a different order on another CPU's SIMD units, moving each image's
    # confidence by ~1e-7 (a Zen 3 gave an ECE 1.8e-8 away). ECE is a mean of per-image |accuracy - confidence|
    # terms, so it moves by no more than the largest such change; 1e-5 is far above it and far below any
    # difference that matters (the card prints ECE to 4 decimals).
    assert report["calibration"]["ece"] == pytest.approx(card["metrics"]["test"]["ece"], abs=1e-5)


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["resnetd-wide-gpu-refit-cifar100", "airbench-cifar100"])
def test_the_cifar100_card_is_reproduced_on_the_real_test_set(real_cifar100, tmp_path, name):
    """The default model's card: single view top-1/top-5, superclass top-1 and ECE on the real CIFAR-100 test
    set, with the weights as shipped (its temperature applied)."""
    from cifarkit.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(name, "test", data_dir=str(real_cifar100), out_dir=tmp_path / "eval")
    card = read_card(name)["metrics"]["test"]
    assert (report["top1"], report["top5"]) == (card["top1"], card["top5"])  # exactly: same weights, same code
    assert report["superclass"]["top1"] == card["superclass_top1"]
    assert report["calibration"]["ece"] == pytest.approx(card["ece"], abs=1e-5)  # see the CIFAR-10 test's note
