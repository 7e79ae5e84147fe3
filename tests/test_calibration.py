"""Temperature scaling: the fit recovers a known temperature, and a model's temperature reaches every score
it gives -- in Python and in the exported ONNX graph (so Node.js and browsers get it too)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifarkit.calibration import fit_temperature, nll


def test_the_fit_recovers_the_temperature_the_labels_were_drawn_with():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20_000, 10, generator=generator) * 3
    labels = torch.multinomial((logits / 2.0).softmax(1), 1, generator=generator).squeeze(1)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(2.0, rel=0.05)
    for other in (1.0, 1.5, 2.5, 4.0):  # it is the minimum of the NLL
        assert nll(logits, labels, temperature) <= nll(logits, labels, other)


def test_a_models_temperature_divides_its_logits(trained_run):
    from cifarkit.pretrained import load_model
    from cifarkit.tta import predict_logits

    trained = load_model(trained_run)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = predict_logits(trained.model, trained.preprocess(images), False)
    trained.temperature = 2.5
    torch.testing.assert_close(trained.probabilities(images), (logits / 2.5).softmax(1))


def test_the_export_bakes_the_temperature_into_the_graph(trained_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from cifarkit.checkpoints import load_checkpoint
    from cifarkit.export import export_onnx, run_onnx
    from cifarkit.pretrained import load_model

    state = load_checkpoint(trained_run / "best.pt")
    state["temperature"] = 3.0
    calibrated = tmp_path / "calibrated.pt"
    torch.save(state, calibrated)
    metadata = export_onnx(calibrated, tmp_path / "model.onnx")
    assert metadata["temperature"] == 3.0
    pixels = np.random.default_rng(2).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    expected = load_model(calibrated).probabilities(torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy()
    assert np.abs(run_onnx(tmp_path / "model.onnx", pixels) - expected).max() < 1e-5
    assert load_model(trained_run).temperature == 1.0  # a checkpoint without one is uncalibrated
