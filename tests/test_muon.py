"""Muon (airbench94_muon's optimizer): the orthogonalised update, the SGD half against torch.optim.SGD, the
parameter split and the translation of airbench94_muon's summed-loss settings, and exact resume."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
import torch.nn.functional as F

from cifarkit.config import load_config
from cifarkit.errors import ConfigError
from cifarkit.models import create_model
from cifarkit.optim import build_optimizer, muon_parameter_groups, scaled_lr, set_lr
from cifarkit.optim.muon import MuonSGD, orthogonalize


def test_orthogonalize_keeps_the_singular_vectors_and_flattens_the_singular_values():
    g = torch.Generator().manual_seed(0)
    for shape in [(64, 576), (576, 64), (10, 10)]:
        m = torch.randn(*shape, generator=g) @ torch.diag(torch.logspace(-0.5, 0, shape[1]))
        out = orthogonalize(m).float()
        assert out.shape == m.shape
        u, _, vh = torch.linalg.svd(m, full_matrices=False)
        # out = U S' V^T with S' in about [0.5, 1.5] (airbench's coefficients do not converge to exactly 1)
        s_prime = torch.diagonal(u.T @ out @ vh.T)
        assert s_prime.min() > 0.3 and s_prime.max() < 1.6, s_prime
        off_diagonal = u.T @ out @ vh.T - torch.diag(s_prime)
        assert off_diagonal.abs().max() < 0.05
        polar = u @ vh  # the exact orthogonal factor
        assert F.cosine_similarity(out.flatten(), polar.flatten(), dim=0) > 0.9


def test_the_sgd_groups_step_exactly_as_torch_sgd():
    torch.manual_seed(0)
    weights = [torch.randn(7, 5), torch.randn(5)]
    ours = [w.clone().requires_grad_() for w in weights]
    theirs = [w.clone().requires_grad_() for w in weights]
    optimizer = MuonSGD([{"params": [ours[0]], "weight_decay": 1e-2}, {"params": [ours[1]], "weight_decay": 0.0}],
                        lr=0.1, momentum=0.85, nesterov=True)
    reference = torch.optim.SGD([{"params": [theirs[0]], "weight_decay": 1e-2}, {"params": [theirs[1]]}],
                                lr=0.1, momentum=0.85, nesterov=True)
    for step in range(5):
        x = torch.randn(3, 7, generator=torch.Generator().manual_seed(step))
        for params, opt in ((ours, optimizer), (theirs, reference)):
            opt.zero_grad()
            ((x @ params[0] + params[1]).tanh().sum()).backward()
            opt.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_a_muon_step_renormalises_the_filters_then_moves_by_the_orthogonalised_momentum():
    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.randn(8, 4, 3, 3) * 5)
    optimizer = MuonSGD([{"params": [w], "orthogonalize": True}], lr=0.1, momentum=0.6, nesterov=True)
    grad = torch.randn_like(w)
    w.grad = grad.clone()
    before = w.detach().clone()
    optimizer.step()
    normalised = before * (8**0.5 / before.norm())
    direction = grad + 0.6 * grad  # Nesterov on a fresh buffer: g + momentum * g
    expected = normalised - 0.1 * orthogonalize(direction.reshape(8, -1)).view_as(w).float()
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-6)
    after = w.detach().clone()
    w.grad = None  # frozen this step: untouched
    optimizer.step()
    assert torch.equal(w.detach(), after)


def test_fast10_muon_splits_parameters_as_airbench94_muon():
    config = load_config("fast10-muon")
    model = create_model("airbench", 10, **config.model.kwargs)
    optimizer = build_optimizer(model, config.optim, batch_size=500)
    groups = {g["name"]: g for g in optimizer.param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    filters = {names[id(p)] for p in groups["muon_filters"]["params"]}
    assert filters == {n for n, p in model.named_parameters() if p.ndim == 4 and n != "whiten.weight"}
    assert {names[id(p)] for p in groups["kernels"]["params"]} == {"head.weight"}
    assert "whiten.bias" in {names[id(p)] for p in groups["biases_and_norms"]["params"]}
    # the SGD rates are per example (linear in the batch); Muon's is a step size and stays 0.24 at any batch
    lr = scaled_lr(config.optim, 500)
    set_lr(optimizer, lr)
    assert groups["kernels"]["lr"] == pytest.approx(0.67 * 500)
    assert groups["biases_and_norms"]["lr"] == pytest.approx(0.053 * 500, rel=1e-3)
    assert groups["muon_filters"]["lr"] == pytest.approx(0.24)
    assert groups["muon_filters"]["momentum"] == 0.6 and groups["kernels"]["momentum"] == 0.85
    # the head as airbench94_muon: weights of std 1, output divided by the width
    assert model.head.weight.std().item() == pytest.approx(1.0)
    assert model.scaling_factor == pytest.approx(1 / 256)


def test_the_sgd_half_matches_airbench94_muon_summed_loss_step():
    """airbench94_muon: SGD on the summed loss, lr 0.67 (head) and 0.053 (biases), weight_decay 2e-6*B / lr, so
    a step is -lr*(B * mean_grad) - 2e-6*B*w. Ours: mean loss with the recipe's rates at the same batch."""
    c = load_config("fast10-muon").optim
    assert (c.lr, c.bias_lr, c.muon_lr) == (0.67, 0.053, 0.24)  # the recipe writes its rates as airbench94_muon does
    batch = 2000
    lr = scaled_lr(c, batch)
    w, mean_grad = torch.randn(10, 256), torch.randn(10, 256)
    for their_lr, our_lr, our_decay in ((0.67, lr, c.weight_decay),
                                        (0.053, lr * c.bias_lr_scale, c.norm_weight_decay)):
        theirs = -their_lr * (batch * mean_grad + (2e-6 * batch / their_lr) * w)
        ours = -our_lr * (mean_grad + our_decay * w)
        torch.testing.assert_close(ours, theirs, rtol=2e-3, atol=1e-6)


def test_an_absolute_bias_rate_is_the_same_optimizer_as_its_ratio():
    """optim.bias_lr (the rate itself, as the anchors write it) builds the groups optim.norm_lr_scale (the rate as a
    multiple of optim.lr) did, and the two together are refused."""
    model = create_model("airbench", 10, widths=[8, 16, 16])
    absolute = load_config("fast10-muon").optim
    ratio = dataclasses.replace(absolute, bias_lr=None, norm_lr_scale=0.053 / 0.67)
    rates = [{g["name"]: g["lr_scale"] for g in muon_parameter_groups(model, c, 2000)} for c in (absolute, ratio)]
    assert rates[0] == pytest.approx(rates[1], rel=1e-12)
    with pytest.raises(ConfigError, match="leave optim.norm_lr_scale at 1"):
        load_config("fast10-muon", ["optim.norm_lr_scale=2"])


def test_muon_refuses_keras_l2_when_the_config_is_loaded():
    with pytest.raises(ConfigError, match="fixed norm"):
        load_config("fast10-muon", ["optim.l2=0.0005"])


def test_a_muon_run_resumes_bitwise(fake_root, tmp_path):
    from cifarkit.train import resume, train
    from cifarkit.train.checkpoint import load_checkpoint

    overrides = [f"data.data_dir={str(fake_root)!r}", "data.val_per_class=10", "model.kwargs.widths=[8,16,16]",
                 "train.batch_size=100", "train.epochs=0", "train.steps=9", "train.eval_every=3",
                 "train.checkpoint_every=3", "train.keep_checkpoints=5", "train.tta=false", "train.device='cpu'",
                 f"train.out_dir={str(tmp_path)!r}", "train.run_name='full'", "train.deterministic=true"]
    train(load_config("fast10-muon", overrides), log=lambda _: None)
    full = tmp_path / "full"
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    for name in ("step-00000009.pt", "step-00000009.pt.sha256"):
        (cut / "checkpoints" / name).unlink()
    for name in ("last.pt", "best.pt", "results.json"):
        (cut / name).unlink(missing_ok=True)
    resume(cut, log=lambda _: None)
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(cut / "last.pt")
    assert a["step"] == b["step"] == 9
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


@pytest.mark.parametrize("option", ["model.kwargs.head_std=-1", "model.kwargs.widths=[0,256,256]",
                                    "model.kwargs.widths=[true,256,256]", "model.kwargs.final_pool='max'"])
def test_bad_airbench_options_are_refused_when_the_config_is_loaded(option):
    """Before any run folder exists (they were once refused only when the model was built, after it)."""
    with pytest.raises(ConfigError, match="model 'airbench'"):
        load_config("fast10-muon", [option])


def test_newton_schulz_runs_in_fp32_where_the_cpu_has_no_native_bf16(monkeypatch):
    import cifarkit.device as device_module
    from cifarkit.optim.muon import newton_schulz_dtype

    monkeypatch.setattr(device_module, "cpu_bf16_flags", lambda cpuinfo=None: [])  # an AVX2-only CPU
    assert newton_schulz_dtype(torch.device("cpu")) == torch.float32
    monkeypatch.setattr(device_module, "cpu_bf16_flags", lambda cpuinfo=None: ["avx512_bf16"])
    assert newton_schulz_dtype(torch.device("cpu")) == torch.bfloat16
    m = torch.randn(16, 72, generator=torch.Generator().manual_seed(0))
    single = torch.linalg.svdvals(orthogonalize(m, dtype=torch.float32))
    assert orthogonalize(m, dtype=torch.float32).dtype == torch.float32
    assert 0.3 < single.min() and single.max() < 1.6  # the same band as in bf16
