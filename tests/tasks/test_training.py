"""The shared pieces of the trainers: weights as safetensors, hold-out splits, the model cache."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from tasks.device import autocast, pick_device, use_bf16
from tasks.shards import ModelCache
from tasks.training import hash_fraction, held_out_mask, load_weights, weights_bytes


def test_weights_round_trip_alone_and_by_name() -> None:
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    load_weights(b, weights_bytes(a))
    assert torch.equal(a.weight, b.weight)
    c, d = torch.nn.Conv2d(1, 1, 1), torch.nn.Linear(3, 2)
    load_weights({"G": c, "E": d}, weights_bytes({"G": torch.nn.Conv2d(1, 1, 1), "E": a}))
    assert torch.equal(d.weight, a.weight)


def test_hold_out_scores_are_the_ones_the_trainers_used() -> None:
    item = "p7"
    digest = hashlib.sha256(f"lineart\0{item}".encode()).digest()
    assert hash_fraction("lineart", item) == int.from_bytes(digest[:8], "little") / 2**64
    hexed = hashlib.sha256(f"colorizer\0{item}".encode()).hexdigest()
    assert hash_fraction("colorizer", item, nbytes=4, byteorder="big") == int(hexed[:8], 16) / 2**32
    ids = [f"i{k}" for k in range(40)]
    held = held_out_mask(ids, "lineart")
    assert held.any() and not held.all()
    assert held_out_mask(["a", "b"], "x", 1e-9).tolist() == [False, True]  # none picked: the last one


def test_model_cache_keeps_one_model() -> None:
    cache, made = ModelCache(), []
    for key in ("a", "a", "b", "a"):
        cache.get(lambda key=key: made.append(key) or key, "ws", key, "cpu")
    assert made == ["a", "b", "a"]


def test_device_helpers() -> None:
    cpu = pick_device("cpu")
    assert cpu.type == "cpu" and use_bf16("fp32", cpu) is False and use_bf16("bf16", cpu) is True
    with autocast(cpu):
        assert not torch.is_autocast_enabled("cpu")
    assert np.array_equal(held_out_mask([], "x"), np.array([], bool))
