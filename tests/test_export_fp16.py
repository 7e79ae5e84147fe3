"""`cifarkit export --quantize fp16`: float16 weights, float32 arithmetic -- half the file, the same answers to
float16's precision, measured against the float32 export on the test images."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("onnxruntime")


def test_fp16_weights_halve_the_file_and_keep_the_answers(trained_run, tmp_path, fake_root):
    import onnx

    from cifarkit.export import export_onnx, run_onnx

    data_dir = os.environ.get("CIFARKIT_TEST_CIFAR10") or str(fake_root)
    full = export_onnx(trained_run, tmp_path / "fp32.onnx")
    half = export_onnx(trained_run, tmp_path / "fp16.onnx", quantize="fp16", data_dir=data_dir)
    q = half["quantization"]
    assert q["fp16_bytes"] < 0.7 * q["float_bytes"]  # the graph itself stays: a tiny test model halves less
    assert (tmp_path / "fp16.onnx").stat().st_size == q["fp16_bytes"]
    assert abs(q["change"]) <= 0.01 and q["max_abs_difference_from_float"] < 5e-3
    graph = onnx.load(str(tmp_path / "fp16.onnx")).graph
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 out, as before
    pixels = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    assert np.abs(run_onnx(tmp_path / "fp16.onnx", pixels) - run_onnx(tmp_path / "fp32.onnx", pixels)).max() < 5e-3
    assert json.loads((tmp_path / "fp16.json").read_text())["model_sha256"] == half["model_sha256"] != full[
        "model_sha256"]
