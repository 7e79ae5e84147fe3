"""Batch mixing (CutMix, mixup): the pictures and weights it makes, one answer whatever the number of processes,
a resumed loader mixing as the uninterrupted one, and the loss it trains on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cifarkit.config import load_config
from cifarkit.data.loader import AugmentConfig, DeviceLoader
from cifarkit.data.mixing import MixedLabels, accuracy_labels, cutmix, mixing_at, mixup, training_loss
from cifarkit.errors import ConfigError


def test_cutmix_pastes_one_box_of_the_partner_and_weights_by_the_share_kept():
    x, partner = torch.zeros(4, 3, 32, 32), torch.ones(4, 3, 32, 32)
    mixed, weight = cutmix(x, partner, 0.75, np.random.default_rng(3))
    from_partner = mixed[0, 0]  # 1 inside the box, 0 outside
    rows, cols = from_partner.nonzero(as_tuple=True)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert int(from_partner.sum()) == int(box)  # one solid rectangle
    assert weight == pytest.approx(1 - int(box) / 1024)
    assert torch.equal(mixed[0], mixed[3])  # one box for the whole batch
    assert torch.equal(x, torch.zeros_like(x))  # the input is not changed in place


def test_cutmix_box_is_clipped_at_the_border_and_the_weight_follows():
    x, partner = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)
    weights = {cutmix(x, partner, 0.1, np.random.default_rng(seed))[1] for seed in range(40)}
    assert max(weights) > 0.1  # a box half outside the picture takes less of it than drawn


def test_mixup_blends_pixels_in_proportion():
    x, partner = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    mixed, weight = mixup(x, partner, 0.3, np.random.default_rng(0))
    assert weight == 0.3 and torch.allclose(mixed, torch.full_like(x, 0.7))


def test_mixed_loss_shares_the_two_labels():
    logits = torch.randn(6, 10)
    a, b = torch.arange(6), torch.arange(6).flip(0)
    assert torch.allclose(training_loss(logits, MixedLabels(a, b, 1.0), 0.1),
                          F.cross_entropy(logits, a, label_smoothing=0.1))
    expected = 0.25 * F.cross_entropy(logits, a) + 0.75 * F.cross_entropy(logits, b)
    assert torch.allclose(training_loss(logits, MixedLabels(a, b, 0.25)), expected)
    assert torch.equal(accuracy_labels(MixedLabels(a, b, 0.25)), b)
    assert torch.equal(accuracy_labels(a), a)


def test_mixing_stops_after_its_fraction_of_the_run():
    assert mixing_at(0, 100, "cutmix", 0.9) and mixing_at(89, 100, "cutmix", 0.9)
    assert not mixing_at(90, 100, "cutmix", 0.9)
    assert not mixing_at(0, 100, "none", 1.0)


def _loader(mix="cutmix", rank=0, world=1, probability=1.0):
    images = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(48)
    config = AugmentConfig(pad=2, mix=mix, mix_probability=probability)
    return DeviceLoader(images, labels, 8, torch.nn.Identity(), config, seed=4, rank=rank, world_size=world)


def test_every_process_mixes_as_one_process_would():
    single, ranks = _loader(), [_loader(rank=r, world=2) for r in range(2)]
    for _ in range(9):
        x, y = single.next_batch(mix=True)
        parts = [r.next_batch(mix=True) for r in ranks]
        assert torch.equal(x, torch.cat([p[0] for p in parts]))
        assert torch.equal(y.a, torch.cat([p[1].a for p in parts]))
        assert torch.equal(y.b, torch.cat([p[1].b for p in parts]))
        assert y.weight == parts[0][1].weight == parts[1][1].weight
        assert torch.equal(y.b, y.a.flip(0))  # partners pair across the global batch


def test_unmixed_batches_are_what_they_were_and_the_probability_holds():
    plain, off = _loader(mix="none"), _loader()
    for _ in range(5):
        a, b = plain.next_batch(), off.next_batch(mix=False)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    half = _loader(probability=0.5)
    mixed = [isinstance(half.next_batch(mix=True)[1], MixedLabels) for _ in range(200)]
    assert 70 < sum(mixed) < 130


def test_a_resumed_loader_mixes_as_the_uninterrupted_one():
    whole, first = _loader(), _loader()
    expected = [whole.next_batch(mix=True) for _ in range(8)]
    for _ in range(3):
        first.next_batch(mix=True)
    resumed = _loader()
    resumed.load_state_dict(first.state_dict())
    for x, y in expected[3:]:
        rx, ry = resumed.next_batch(mix=True)
        assert torch.equal(x, rx) and ry.weight == y.weight


def test_mix_settings_are_checked():
    with pytest.raises(ConfigError, match="augment.mix"):
        load_config(overrides=['augment.mix="blend"'])
    with pytest.raises(ConfigError, match="augment.mix_probability"):
        load_config(overrides=["augment.mix_probability=1.5"])
