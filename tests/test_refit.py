"""Fitting a model's classifier again on its frozen features (`cifarkit refit-head`): what it writes loads like a
run, keeps every weight before the classifier, reports figures a direct computation agrees with, and chooses the
L2 by its stated rule."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from cifarkit.cli import main
from cifarkit.evaluate import split_logits
from cifarkit.features import feature_fingerprint
from cifarkit.loading import load_model
from cifarkit.refit import RefitError, choose, classifier_names, fit_classifier, refit_head


@pytest.fixture(scope="module")
def refitted(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("refit") / "run"
    results = refit_head(trained_run, out, l2s=(1e-4, 1e-2), mirror=False, log=lambda _: None)
    return out, results


def test_refit_keeps_the_features_and_changes_only_the_classifier(trained_run, refitted):
    out, _ = refitted
    before, after = load_model(trained_run), load_model(out)
    weight_name, bias_name = classifier_names(after.model)
    # taught heads and the outlier score's feature bank stay valid: the features are the same
    assert feature_fingerprint(before.model, before.preprocess) == feature_fingerprint(after.model, after.preprocess)
    old, new = before.model.state_dict(), after.model.state_dict()
    changed = {name for name in old if not torch.equal(old[name], new[name])}
    assert changed == {weight_name} | ({bias_name} if bias_name else set())


def test_refit_figures_agree_with_a_direct_computation(refitted):
    out, results = refitted
    logits, labels = split_logits(load_model(out), "val")
    assert results["val"]["top1"] == pytest.approx(float((logits.argmax(1) == labels).double().mean()), abs=1e-6)
    assert results["val"]["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-4)
    logits, labels = split_logits(load_model(out), "test")
    assert results["test"]["top1"] == pytest.approx(float((logits.argmax(1) == labels).double().mean()), abs=1e-6)
    record = json.loads((out / "refit.json").read_text())
    assert record["l2"] == results["refit"]["l2"] in (1e-4, 1e-2)
    assert choose(record["candidates"], record["as_trained"]["top1"])["l2"] == record["l2"]


def test_the_rule_keeps_top1_then_takes_the_lowest_nll():
    def candidate(l2, top1, nll):
        return {"l2": l2, "val": {"top1": top1, "nll_calibrated": nll}}

    candidates = [candidate(1e-5, 0.760, 0.90), candidate(1e-4, 0.755, 0.89), candidate(1e-3, 0.740, 0.85)]
    assert choose(candidates, own_top1=0.754)["l2"] == 1e-4  # 1e-3 has the lowest NLL but loses top-1
    assert choose(candidates, own_top1=0.770)["l2"] == 1e-5  # none keeps top-1: the highest


def test_fit_classifier_reaches_the_penalised_optimum():
    torch.manual_seed(0)
    x, y = torch.randn(600, 8), torch.randint(0, 4, (600,))
    model = torch.nn.Module()
    model.head = torch.nn.Linear(8, 4)
    model.classify = model.head  # the protocol's classify: the layer itself
    w, b = fit_classifier(model, ("head.weight", "head.bias"), x, y, l2=0.01)
    w.requires_grad_(True)
    b.requires_grad_(True)
    loss = F.cross_entropy(x @ w.T + b, y) + 0.01 / 2 * (w * w).sum()
    grads = torch.autograd.grad(loss, [w, b])
    assert max(float(g.abs().max()) for g in grads) < 1e-4  # a stationary point of a convex objective


def test_refit_refuses_a_folder_with_files_and_bad_penalties(trained_run, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(RefitError, match="already holds files"):
        refit_head(trained_run, tmp_path, l2s=(1e-4,), log=lambda _: None)
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert main(["refit-head", str(trained_run), "--out", str(tmp_path / "new"), "--l2", "1e-4,lots"]) == 1
    assert "--l2 takes numbers" in capsys.readouterr().err
    assert main(["refit-head", str(trained_run), "--out", str(tmp_path / "new"), "--l2", "-1"]) == 1
    assert not (tmp_path / "new").exists()  # nothing half-written
