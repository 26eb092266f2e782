"""The two pseudo-labelling engines (ONNX Runtime agrees with PyTorch; which one runs) and
the readers that feed them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from models.registry import create
from tasks.pseudolabel import OnnxSegmenter, PseudolabelOptions, infer, pick_engine, producer_version, read_ahead
from tasks.synth import draw_portrait


@pytest.fixture(scope="module")
def networks() -> tuple[torch.nn.Module, OnnxSegmenter]:
    torch.manual_seed(0)
    model = create("segmenter", "unet-mobilenetv2-small", num_classes=7).eval()
    with torch.no_grad():  # non-trivial normalisation statistics, as after training
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model, OnnxSegmenter(model, threads=1, max_batch=2)


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (5, 3, 96, 160)])  # 5: runs of 2, 2 and 1
def test_onnxruntime_logits_match_pytorch_for_any_batch_and_side(networks, shape) -> None:  # noqa: ANN001
    model, onnx = networks
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model(x)
    got = onnx(x)
    assert got.shape == ref.shape == (shape[0], 7, shape[2], shape[3])
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), (got - ref).abs().max()


def test_both_engines_label_portraits_alike_with_flip_tta(networks) -> None:  # noqa: ANN001
    model, onnx = networks
    images = np.stack([draw_portrait(3, i, 96).image for i in range(5)])
    cpu = torch.device("cpu")
    p_t, c_t, m_t = infer(model, images, cpu, batch=2, flip=True)
    p_o, c_o, m_o = infer(onnx, images, cpu, batch=2, flip=True)
    assert p_o.shape == p_t.shape == (5, 96, 96) and p_o.dtype == np.uint8
    assert (p_o == p_t).mean() > 0.999  # only near-ties may flip
    assert np.abs(c_o - c_t).max() < 1e-5
    assert np.abs(m_o.astype(int) - m_t.astype(int)).max() <= 1
    _, c_plain, _ = infer(onnx, images, cpu, batch=2, flip=False)
    assert not np.allclose(c_plain, c_o)  # the mirror's prediction was averaged in


def test_the_engine_that_runs() -> None:
    cpu = torch.device("cpu")
    assert pick_engine("auto", "cpu", "fp32") == ("onnxruntime", cpu)
    assert pick_engine("auto", "cpu", "bf16") == ("torch", cpu)  # bf16 asked for: PyTorch's autocast
    assert pick_engine("torch", "cpu", "auto") == ("torch", cpu)
    assert pick_engine("onnxruntime", "auto", "auto") == ("onnxruntime", cpu)  # CPU even beside a GPU
    for bad in ({"device": "cuda"}, {"precision": "bf16"}):  # refused before any work starts
        with pytest.raises(ValidationError, match="runs fp32 on the CPU"):
            PseudolabelOptions(engine="onnxruntime", **bad)


def test_the_engine_is_part_of_the_producer_version() -> None:
    versions = {producer_version("d", PseudolabelOptions(engine=e)) for e in ("auto", "torch", "onnxruntime")}
    assert len(versions) == 3


@pytest.mark.parametrize("threads", [1, 3])
def test_read_ahead_keeps_order_and_bounds_what_is_in_flight(threads: int) -> None:
    import threading
    import time

    lock, state = threading.Lock(), {"started": 0, "max_ahead": 0}
    consumed = [0]

    def read(b: int) -> np.ndarray:
        with lock:
            state["started"] += 1
            state["max_ahead"] = max(state["max_ahead"], state["started"] - consumed[0])
        time.sleep(0.001 * ((b * 7) % 5))  # finish out of order
        return np.full(2, b)

    batches = list(range(11))
    got = []
    for images in read_ahead(read, batches, threads):
        got.append(int(images[0]))
        consumed[0] += 1
    assert got == batches
    assert state["max_ahead"] <= 2 * threads  # the one handed out plus 2 * threads - 1 ahead
