""""None of these": the outlier scores and their figures, the record a model stores, the features and outlier
score in the export (schema version 2, version 1 still read), and the shipped model's AUROC on real pictures."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarkit.outlier import (
    SCORES,
    Mahalanobis,
    auroc,
    fit_record,
    fpr_at_tpr,
    outlier_module,
    record_problem,
    score,
    threshold_keeping,
)


def test_auroc_is_the_probability_an_outlier_scores_higher():
    rng = np.random.default_rng(0)
    inside, outside = rng.normal(0, 1, 300), rng.normal(1, 1, 200)
    pairs = (outside[:, None] > inside[None, :]).mean() + 0.5 * (outside[:, None] == inside[None, :]).mean()
    assert auroc(inside, outside) == pytest.approx(pairs)
    assert auroc(np.zeros(5), np.zeros(5)) == 0.5  # ties count half
    assert auroc(np.zeros(5), np.ones(5)) == 1.0


def test_the_threshold_keeps_95_percent_known_and_fpr_counts_the_outliers_below_it():
    inside = np.arange(1000, dtype=float)
    t = threshold_keeping(inside)
    assert (inside <= t).mean() == pytest.approx(0.95, abs=0.002)
    assert fpr_at_tpr(inside, np.array([0.0, 10_000.0])) == 0.5


def test_mahalanobis_is_the_smallest_class_distance():
    rng = np.random.default_rng(1)
    features, labels = rng.normal(size=(400, 6)), rng.integers(0, 4, 400)
    module = SCORES["mahalanobis"](features, labels, 1.0)
    assert isinstance(module, Mahalanobis)
    x = rng.normal(size=(5, 6))
    means = np.stack([features[labels == c].mean(0) for c in range(4)])
    centred = features - means[labels]
    precision = np.linalg.pinv(centred.T @ centred / len(features))
    direct = np.min([np.einsum("nd,de,ne->n", x - mu, precision, x - mu) for mu in means], axis=0)
    assert score(module, x.astype(np.float32), np.zeros((5, 4), np.float32)) == pytest.approx(direct, rel=1e-4)


def test_logit_scores_and_the_stored_record():
    logits = np.array([[4.0, 0.0], [1.0, 0.9]], np.float32)
    none = np.zeros((2, 0), np.float32)
    assert score(SCORES["max_logit"](None, None, 1.0), none, logits) == pytest.approx([-4.0, -1.0])
    assert score(SCORES["energy"](None, None, 1.0), none, logits) == pytest.approx(
        -np.log(np.exp(logits).sum(1)), rel=1e-6)
    record = fit_record(np.random.default_rng(2).normal(size=(500, 10)) * 3, 1.0, "max_logit")
    assert record_problem(record) is None and record["score"] == "max_logit" and record["known_rate"] == 0.95
    assert isinstance(outlier_module(record), torch.nn.Module)
    assert "must be one of" in record_problem({"score": "knn", "threshold": 1.0})  # a whole bank: not storable
    assert "finite" in record_problem({"score": "msp", "threshold": float("nan")})
    assert record_problem([]) is not None


def _clusters(rng, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features in 4 tight clusters on the unit sphere of R^8 (a model's known pictures), their logits and labels."""
    centres = np.eye(8)[:4] * 5
    labels = rng.integers(0, 4, count)
    features = (centres[labels] + rng.normal(0, 0.3, (count, 8))).astype(np.float32)
    return features, (features[:, :4] + rng.normal(0, 0.5, (count, 4))).astype(np.float32), labels


def test_the_stored_score_is_either_the_max_logit_or_the_knn_distance_saying_outlier():
    """either_of (the max logit and the features' kNN): 95% of the validation pictures known in all; a picture far
    from every training picture is an outlier even with a confident logit (what the max logit alone misses:
    noise, blobs), and one with low logits is one too; the record carries its bank and survives JSON, and a
    tampered bank is refused."""
    from cifarkit.outlier import COMBINED, DEFAULT_SCORE, STORED_BANK, EitherOf

    rng = np.random.default_rng(0)
    train, _, _ = _clusters(rng, 3000)
    val, val_logits, _ = _clusters(rng, 1000)
    record = json.loads(json.dumps(fit_record(val_logits, 1.0, features=val, train_features=train)))
    assert DEFAULT_SCORE == COMBINED == record["score"] and record["threshold"] == 0.0
    assert [part["score"] for part in record["parts"]] == ["max_logit", "knn"]  # no low-level features given
    assert record_problem(record) is None and record["parts"][1]["bank"]["shape"] == [STORED_BANK, 8]
    module = outlier_module(record)
    assert isinstance(module, EitherOf)
    assert (score(module, val, val_logits) <= 0).mean() == pytest.approx(0.95, abs=0.002)
    far = np.full((1, 8), 3.0, np.float32)  # between the clusters, nowhere near a training picture
    confident = np.array([[50.0, 0, 0, 0]], np.float32)
    assert score(module, far, confident)[0] > 0  # the kNN part says so
    assert score(outlier_module({"score": "max_logit", "threshold": record["parts"][0]["center"]}), far,
                 confident)[0] <= record["parts"][0]["center"]  # the max logit alone would call it known
    assert score(module, val[:1], np.full((1, 4), -50.0, np.float32))[0] > 0  # the max-logit part says so
    with pytest.raises(ValueError, match="fitted on features"):
        fit_record(val_logits, 1.0)
    logit, knn = record["parts"]
    for bad in ({"shape": [STORED_BANK, 9]}, {"float16_base64": "@@"}):
        assert "bank" in record_problem({**record, "parts": [logit, {**knn, "bank": {**knn["bank"], **bad}}]})
    assert "scale" in record_problem({**record, "parts": [logit, {**knn, "scale": 0}]})
    assert "one of" in record_problem({**record, "parts": [logit, {**knn, "score": "mahalanobis"}]})
    # a record written before either_of (its bank beside the parts) loads and scores the same
    earlier = {**record, "score": "max_logit_or_knn", "parts": [logit, {k: v for k, v in knn.items() if k != "bank"}],
               "bank": knn["bank"]}
    assert record_problem(earlier) is None
    assert np.array_equal(score(outlier_module(earlier), val, val_logits), score(module, val, val_logits))
    assert "bank" in record_problem({k: v for k, v in earlier.items() if k != "bank"})


def test_the_low_level_part_flags_a_picture_the_features_take_for_a_training_one():
    """With low-level features, a third part: a picture whose features sit among the training pictures' but whose
    low-level features lie beyond every validation picture's (a colour wheel to a CIFAR network) is an outlier,
    and 95% of the validation split stays known in all."""
    rng = np.random.default_rng(1)
    train, _, _ = _clusters(rng, 3000)
    val, val_logits, _ = _clusters(rng, 1000)
    train_low, val_low = (rng.normal(0, 1, (n, 6)).astype(np.float32) + 4 for n in (3000, 1000))
    record = json.loads(json.dumps(fit_record(val_logits, 1.0, features=val, train_features=train,
                                              low_level=val_low, train_low_level=train_low)))
    assert [part["score"] for part in record["parts"]] == ["max_logit", "knn", "low_level_knn"]
    assert record_problem(record) is None
    module = outlier_module(record)
    assert module.reads_low_level
    assert (score(module, val, val_logits, low_level=val_low) <= 0).mean() == pytest.approx(0.95, abs=0.002)
    odd = np.full((1, 6), 4.0, np.float32)
    odd[0, 0] = -20.0  # another direction entirely at the low level
    assert score(module, val[:1], val_logits[:1], low_level=val_low[:1])[0] <= 0
    assert score(module, val[:1], val_logits[:1], low_level=odd)[0] > 0
    with pytest.raises(ValueError, match="low-level features"):
        score(module, val[:1], val_logits[:1])

def test_a_checkpoint_with_a_tampered_outlier_record_is_refused(trained_run, tmp_path):
    from cifarkit.checkpoints import load_checkpoint
    from cifarkit.errors import CheckpointError
    from cifarkit.loading import load_model

    state = load_checkpoint(trained_run / "best.pt")
    state["outlier"] = {"score": "max_logit", "threshold": "high"}
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="outlier"):
        load_model(tmp_path / "bad.pt")


def test_calibrate_fits_the_outlier_threshold_that_predict_then_uses(trained_run, tmp_path, fake_root):
    from cifarkit.evaluate import calibrate_run
    from cifarkit.loading import load_model
    from cifarkit.predict import format_predictions, predict_files

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    data_dir = os.environ.get("CIFARKIT_TEST_CIFAR10") or str(fake_root)
    assert load_model(run).outlier is None
    before = json.loads(format_predictions(predict_files(run, [_picture(tmp_path)]), "json"))[0]
    assert before["known"] is None and before["outlier_score"] is None  # not fitted: no verdict, not a guess
    record = calibrate_run(run, data_dir)["outlier"]
    trained = load_model(run)
    assert trained.outlier == record and record["score"] == "either_of"
    after = json.loads(format_predictions(predict_files(run, [_picture(tmp_path)]), "json"))[0]
    features, logits, low_level = trained.feature_pass(torch.from_numpy(_pixels()).permute(0, 3, 1, 2))
    assert isinstance(after["known"], bool) and after["outlier_score"] == pytest.approx(
        trained.outlier_scores(features, logits, low_level).item(), abs=1e-5)


def test_calibrate_takes_a_checkpoint_file_and_refuses_a_shipped_model(trained_run, tmp_path, fake_root, capsys):
    """`cifarkit calibrate --model FILE.pt` fits what `calibrate RUN` fits, for that checkpoint (calibration.json
    beside it, keyed by its sha256); a shipped model's name is one line saying it comes calibrated."""
    from cifarkit.cli import main
    from cifarkit.loading import load_model

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    data_dir = os.environ.get("CIFARKIT_TEST_CIFAR10") or str(fake_root)
    assert main(["calibrate", "--model", str(run / "last.pt"), "--data-dir", data_dir]) == 0
    assert "wrote" in capsys.readouterr().out and (run / "calibration.json").is_file()
    calibrated = load_model(run / "last.pt")
    assert calibrated.outlier is not None and calibrated.temperature != 1.0
    assert json.loads((run / "calibration.json").read_text())["checkpoint_sha256"] == calibrated.sha256
    assert main(["calibrate", "resnetd-cifar100"]) == 1
    err = capsys.readouterr().err
    assert "calibrated when it was packaged" in err and len(err.splitlines()) == 1
    assert main(["calibrate"]) == 1 and "name the model to calibrate" in capsys.readouterr().err


def _pixels() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)


def _picture(folder: Path) -> Path:
    from PIL import Image

    path = folder / "picture.png"
    Image.fromarray(_pixels()[0]).save(path)
    return path


def test_the_export_outputs_features_and_outlier_score_from_one_pass(trained_run, tmp_path, fake_root):
    pytest.importorskip("onnxruntime")
    from cifarkit.evaluate import calibrate_run
    from cifarkit.export import export_onnx, run_onnx_outputs
    from cifarkit.export_metadata import metadata_problems
    from cifarkit.loading import load_model

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    calibrate_run(run, os.environ.get("CIFARKIT_TEST_CIFAR10") or str(fake_root))
    metadata = export_onnx(run, tmp_path / "m.onnx")
    trained = load_model(run)
    assert metadata["version"] == 2 and metadata_problems(metadata) == []
    assert metadata["features"]["fingerprint"] == trained.feature_fingerprint
    assert metadata["outlier"]["threshold"] == trained.outlier["threshold"]
    pixels = np.random.default_rng(3).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    outputs = run_onnx_outputs(tmp_path / "m.onnx", pixels)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    features = trained.features(x).numpy()
    assert outputs["features"].shape == (6, metadata["features"]["shape"][1])
    assert np.abs(outputs["features"] - features).max() < 1e-4 * max(1, np.abs(features).max())
    expected = trained.outlier_scores(*trained.feature_pass(x)).numpy()
    assert np.abs(outputs["outlier_score"] - expected).max() < 1e-3


def test_features_fingerprint_names_the_feature_extractor(trained_run):
    from cifarkit.features import feature_fingerprint, head_parameter_names
    from cifarkit.loading import load_model

    trained = load_model(trained_run)
    assert head_parameter_names(trained.model)  # the classifier's weights, found without naming them
    before = trained.feature_fingerprint
    with torch.no_grad():  # a new head: the same features, the same fingerprint
        for name, p in trained.model.named_parameters():
            if name in head_parameter_names(trained.model):
                p.add_(1.0)
    assert feature_fingerprint(trained.model, trained.preprocess) == before
    with torch.no_grad():  # any other weight: another feature extractor
        next(iter(trained.model.parameters())).add_(1e-3)
    assert feature_fingerprint(trained.model, trained.preprocess) != before


def test_a_version_1_export_still_loads_and_version_3_is_refused():
    from cifarkit.export_metadata import metadata_problems

    shipped = json.loads((Path(__file__).parents[1] / "web" / "public" / "model" / "model.json").read_text())
    assert shipped["version"] == 2 and metadata_problems(shipped) == []
    older = {k: v for k, v in shipped.items() if k not in ("features", "outlier")}
    assert metadata_problems({**older, "version": 1}) == []
    assert metadata_problems({k: v for k, v in older.items() if k != "version"}) == []
    assert "reads versions 1, 2" in metadata_problems({**shipped, "version": 3})[0]
    assert metadata_problems({**shipped, "features": {**shipped["features"], "fingerprint": "x"}})
    assert metadata_problems({**shipped, "outlier": {**shipped["outlier"], "threshold": None}})


# Measured once (docs/using-the-model.md): the default model's score, the whole CIFAR-100 test set against the
# whole CIFAR-10 test set.
SHIPPED_TEST_AUROC = 0.7574


@pytest.mark.parametrize("count", [3000])
def test_the_shipped_score_separates_cifar100_from_cifar10_at_the_reported_auroc(real_cifar100, real_cifar10, count):
    from cifarkit.data import load_dataset
    from cifarkit.loading import load_pretrained

    trained = load_pretrained()
    inside_images = load_dataset("cifar100", real_cifar100, download=False).test_images[:count]
    outside_images = load_dataset("cifar10", real_cifar10, download=False).test_images[:count]

    def scores(images):
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
        return trained.outlier_scores(*trained.feature_pass(pixels)).numpy()

    inside, outside = scores(inside_images), scores(outside_images)
    assert auroc(inside, outside) == pytest.approx(SHIPPED_TEST_AUROC, abs=0.01)
    assert (inside <= trained.outlier["threshold"]).mean() == pytest.approx(0.95, abs=0.015)
