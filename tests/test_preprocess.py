"""Preprocess (GCN, ZCA, mean/std), batched augmentation and the device loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifarkit.data.loader import AugmentConfig, DeviceLoader, apply_augmentation, draw_augmentation, eval_batches
from cifarkit.data.preprocess import Preprocess, PreprocessConfig
from cifarkit.errors import ConfigError


def smooth_images(n: int, seed: int = 0) -> np.ndarray:
    """Correlated pixels (blurred noise), so whitening has real work to do."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 3))
    x = np.repeat(np.repeat(x, 4, axis=1), 4, axis=2) + 0.3 * rng.normal(size=(n, 32, 32, 3))
    return np.clip(128 + 40 * x, 0, 255).astype(np.uint8)


def test_gcn_centres_each_image():
    pre = Preprocess(PreprocessConfig(normalize="none", gcn=True)).fit(smooth_images(4))
    out = pre(torch.from_numpy(smooth_images(4, 1)).permute(0, 3, 1, 2))
    assert torch.allclose(out.flatten(1).mean(1), torch.zeros(4), atol=1e-6)


def test_zca_whitened_training_data_has_identity_covariance():
    images = smooth_images(4000)
    pre = Preprocess(PreprocessConfig(normalize="zca", gcn=True, zca_epsilon=1e-5)).fit(images)
    out = pre(torch.from_numpy(images).permute(0, 3, 1, 2)).flatten(1).double()
    cov = (out - out.mean(0)).T @ (out - out.mean(0)) / out.shape[0]
    # The 8x8 blocks give the data ~192+ strong directions; whitened, their variance is 1 and the rest ~1
    # up to epsilon. Check against identity in the span of the data (GCN removes one direction).
    eig = torch.linalg.eigvalsh(cov)
    assert eig[-1] < 1.01 and (eig[1:] > 0.5).float().mean() > 0.99
    off = cov - torch.diag(torch.diag(cov))
    assert off.abs().max() < 0.1


def test_zca_reference_against_numpy():
    images = smooth_images(600)
    eps = 1e-2
    pre = Preprocess(PreprocessConfig(normalize="zca", gcn=True, zca_epsilon=eps)).fit(images)
    x = images.transpose(0, 3, 1, 2).reshape(600, -1).astype(np.float64) / 255
    x -= x.mean(1, keepdims=True)
    x_centred = x - x.mean(0)
    u, s, _ = np.linalg.svd(x_centred.T @ x_centred / 600)
    w = u @ np.diag(1 / np.sqrt(s + eps)) @ u.T
    expected = x_centred @ w
    out = pre(torch.from_numpy(images).permute(0, 3, 1, 2)).flatten(1).double().numpy()
    assert np.allclose(out, expected, atol=2e-3)


def test_meanstd_normalizes_channels():
    images = smooth_images(500)
    pre = Preprocess(PreprocessConfig(normalize="meanstd")).fit(images)
    out = pre(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert torch.allclose(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(out.std((0, 2, 3)), torch.ones(3), atol=1e-3)


def test_preprocess_state_round_trip():
    pre = Preprocess(PreprocessConfig(normalize="zca", gcn=True)).fit(smooth_images(100))
    again = Preprocess.from_state(pre.to_state())
    x = torch.from_numpy(smooth_images(5, 2)).permute(0, 3, 1, 2)
    assert torch.equal(pre(x), again(x))


def test_bad_preprocess_config():
    from cifarkit.config import load_config

    with pytest.raises(ConfigError, match="normalize"):  # refused when the config is loaded
        load_config("elu-seed", ["preprocess.normalize=pca"])
    with pytest.raises(ConfigError, match="gcn_scale"):
        Preprocess(PreprocessConfig(gcn_scale=True))


def test_crops_stay_inside_the_padded_image():
    n, pad = 2000, 4
    x = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32).repeat(n, 1, 1, 1) + 1
    config = AugmentConfig(pad=pad, flip=False)
    out = apply_augmentation(x, draw_augmentation(n, config, torch.Generator().manual_seed(0)), config)
    assert out.shape == x.shape
    # Each crop is the padded image shifted by (dy, dx) in [-pad, pad]: find the shift from a surviving pixel.
    for i in range(0, n, 97):
        crop = out[i, 0]
        ys, xs = torch.nonzero(crop, as_tuple=True)
        value = int(crop[ys[0], xs[0]].item()) - 1
        dy, dx = value // 32 - ys[0].item(), value % 32 - xs[0].item()
        assert -pad <= dy <= pad and -pad <= dx <= pad
        shifted = torch.zeros(32 + 2 * pad, 32 + 2 * pad)
        shifted[pad:pad + 32, pad:pad + 32] = x[0, 0]
        assert torch.equal(crop, shifted[pad + dy:pad + dy + 32, pad + dx:pad + dx + 32])
    offsets_seen = {tuple(out[i, 0].nonzero()[0].tolist()) + (int(out[i, 0].max()),) for i in range(n)}
    assert len(offsets_seen) > 10  # crops really vary


def test_flips_happen_about_half_the_time():
    x = torch.arange(32, dtype=torch.float32).view(1, 1, 1, 32).repeat(10_000, 1, 32, 1)
    config = AugmentConfig(pad=0, flip=True)
    out = apply_augmentation(x, draw_augmentation(len(x), config, torch.Generator().manual_seed(0)), config)
    flipped = (out[:, 0, 0, 0] == 31).float().mean().item()
    assert 0.48 < flipped < 0.52
    assert torch.equal(out[out[:, 0, 0, 0] == 31][0], x[0].flip(2))


def test_loader_yields_every_training_image_once_per_epoch():
    n, batch = 103, 10
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 32, 32).contiguous()
    labels = torch.arange(n)
    loader = DeviceLoader(images, labels, batch, torch.nn.Identity(), AugmentConfig(pad=0, flip=False), seed=1)
    epochs = []
    for _ in range(3):
        seen = torch.cat([loader.next_batch()[1] for _ in range(len(loader))])
        epochs.append(seen)
        assert len(seen) == 100 and len(set(seen.tolist())) == 100  # full batches, no repeats
    assert not torch.equal(epochs[0], epochs[1])  # a fresh permutation each epoch


def test_loader_state_resumes_the_same_batches():
    images = torch.randint(0, 255, (50, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(50)

    def make():
        return DeviceLoader(images, labels, 8, Preprocess(PreprocessConfig(normalize="none")), AugmentConfig(), 3)

    a = make()
    for _ in range(9):
        a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(8)]
    b = make()
    b.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(expected, [b.next_batch() for _ in range(8)], strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_eval_batches_cover_the_split_in_order():
    images = torch.zeros(23, 3, 32, 32, dtype=torch.uint8)
    labels = torch.arange(23)
    got = torch.cat([y for _, y in eval_batches(images, labels, 5, torch.nn.Identity())])
    assert torch.equal(got, labels)
