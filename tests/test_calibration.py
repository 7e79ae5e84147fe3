"""Temperature scaling: the fit recovers a known temperature, and a model's temperature reaches every score
it gives -- in Python and in the exported ONNX graph (so Node.js and browsers get it too)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifarkit.calibration import CalibrationError, fit_temperature, nll


def test_the_fit_recovers_the_temperature_the_labels_were_drawn_with():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20_000, 10, generator=generator) * 3
    labels = torch.multinomial((logits / 2.0).softmax(1), 1, generator=generator).squeeze(1)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(2.0, rel=0.05)
    for other in (1.0, 1.5, 2.5, 4.0):  # it is the minimum of the NLL
        assert nll(logits, labels, temperature) <= nll(logits, labels, other)


@pytest.mark.parametrize("case, message", [
    ("none", "at least 100 held-out images; got 0"), ("one", "at least 100 held-out images; got 1"),
    ("nan", "not finite"), ("inf", "not finite"), ("labels", "class indices"), ("constant", "at the bound"),
    ("shape", r"logits \[N, classes\]")])
def test_what_cannot_calibrate_is_refused_not_answered_with_a_bound(case, message):
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(500, 10, generator=generator), torch.randint(0, 10, (500,), generator=generator)
    if case == "none":
        logits, labels = logits[:0], labels[:0]
    elif case == "one":
        logits, labels = logits[:1], labels[:1]
    elif case in ("nan", "inf"):
        logits[3, 2] = float(case)
    elif case == "labels":
        labels[0] = 10
    elif case == "constant":  # labels the scores say nothing about: the NLL falls all the way to T = 20
        logits, labels = logits * 50, torch.randint(0, 10, (500,), generator=generator)
    else:
        labels = labels[:-1]
    with pytest.raises(CalibrationError, match=message):
        fit_temperature(logits, labels)


def test_a_models_temperature_divides_its_logits(trained_run):
    from cifarkit.loading import load_model
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
    from cifarkit.loading import load_model

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


def test_the_ece_fit_is_no_worse_in_ece_than_the_nll_fit():
    from cifarkit.calibration import expected_calibration_error, fit_temperature_for_ece

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5_000, 10, generator=generator) * 3
    labels = torch.multinomial((logits / 2.0).softmax(1), 1, generator=generator).squeeze(1)
    by_nll, by_ece = fit_temperature(logits, labels), fit_temperature_for_ece(logits, labels)
    assert by_ece == pytest.approx(2.0, rel=0.1)
    assert expected_calibration_error(logits, labels, by_ece) <= expected_calibration_error(logits, labels, by_nll)
    probabilities = (logits / by_nll).softmax(1)  # the same ECE as `cifarkit evaluate` computes
    from cifarkit.evaluate import expected_calibration_error as evaluate_ece

    correct = (probabilities.argmax(1) == labels).numpy()
    assert expected_calibration_error(logits, labels, by_nll) == pytest.approx(
        evaluate_ece(probabilities.max(1).values.numpy(), correct)[0], abs=1e-6)  # float32 there


def test_cifarkit_calibrate_fits_a_runs_temperature_that_predict_and_export_then_use(trained_run, tmp_path,
                                                                                   fake_root, capsys):
    import json
    import os
    import shutil

    from cifarkit.cli import main
    from cifarkit.loading import load_model

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    data_dir = os.environ.get("CIFARKIT_TEST_CIFAR10") or str(fake_root)
    assert load_model(run).temperature == 1.0
    assert main(["calibrate", str(run), "--data-dir", data_dir]) == 0
    assert "temperature" in capsys.readouterr().out
    record = json.loads((run / "calibration.json").read_text())
    assert load_model(run).temperature == pytest.approx(record["temperature"]) != 1.0
    assert record["val_nll"]["after"] <= record["val_nll"]["before"]
    (run / "calibration.json").write_text(json.dumps({**record, "checkpoint_sha256": "0" * 64}))
    assert load_model(run).temperature == 1.0  # fitted for another checkpoint: not used


@pytest.mark.parametrize("promise, chosen", [(1.0, "nll"), (0.0, "ece")])
def test_auto_takes_the_nll_fit_unless_its_validation_ece_breaks_the_promise(monkeypatch, promise, chosen):
    """`--for auto` (the packaging's default): the NLL's temperature while its validation ECE is within the card's
    promise, the ECE's once it is not; the record says which and why."""
    from cifarkit import evaluate

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2_000, 10, generator=generator) * 3
    labels = torch.multinomial((logits / 2.0).softmax(1), 1, generator=generator).squeeze(1)
    monkeypatch.setattr(evaluate, "ECE_PROMISE", promise)
    record = evaluate.calibration_record(logits.double(), labels, "auto")
    assert record["temperature"] == record["alternatives"][chosen]["temperature"]
    assert record["fitted_for"].startswith(f"the validation {chosen.upper()} (auto: ")


def test_the_cli_offers_every_calibration_target():
    from cifarkit.cli import build_parser
    from cifarkit.evaluate import CALIBRATION_TARGETS

    calibrate = build_parser()._subparsers._group_actions[0].choices["calibrate"]
    target = next(a for a in calibrate._actions if a.dest == "target")
    assert tuple(target.choices) == CALIBRATION_TARGETS
