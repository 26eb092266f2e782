"""What the training loops share: seeded random generators, weights and optimiser state as
safetensors, hash-based hold-out splits, and the per-process model cache of the shard tasks.

A loop that draws every batch's randomness from ``seeded_generator(seed, phase, step)``
needs no random-number state in its checkpoints: resuming replays the same draws. Weights
and the optimisers' moments go to safetensors (never pickle); hyper-parameters to JSON.
Where checkpoints and train states are stored: ``storage.checkpoints``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
import torch

T = TypeVar("T")
Nets = torch.nn.Module | Mapping[str, torch.nn.Module]


def seeded_generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded by a hash of ``parts`` (e.g. seed, phase, step)."""
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def optimizer_state(optimizers: dict[str, torch.optim.Optimizer]) -> tuple[bytes, dict[str, Any]]:
    """Safetensors bytes of the optimisers' tensors and their param groups (for JSON), by name."""
    from safetensors.torch import save

    tensors, groups = {}, {}
    for name, opt in optimizers.items():
        state = opt.state_dict()
        for pid, st in state["state"].items():
            for key, value in st.items():
                tensors[f"{name}.{pid}.{key}"] = torch.as_tensor(value).cpu().contiguous()
        groups[name] = state["param_groups"]
    return save(tensors), groups


def load_optimizer_state(
    optimizers: dict[str, torch.optim.Optimizer], blob: bytes, groups: dict[str, Any], unnamed: bool = False
) -> None:
    """Restore what :func:`optimizer_state` saved.

    ``unnamed``: tensors named ``<param id>.<state key>``, all of the one optimiser given
    (``train-unet``'s first train-state layout, ``storage.checkpoints.TrainState.legacy``).
    """
    from safetensors.torch import load

    tensors = load(blob)
    if unnamed:
        (only,) = optimizers
        tensors = {f"{only}.{k}": v for k, v in tensors.items()}
    for name, opt in optimizers.items():
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            owner, pid, what = key.split(".", 2)
            if owner == name:
                state.setdefault(int(pid), {})[what] = value
        opt.load_state_dict({"state": state, "param_groups": groups[name]})


def weights_bytes(nets: Nets) -> bytes:
    """Safetensors bytes of a module's state dict (contiguous CPU tensors); of several modules,
    given by name, with their tensors named ``<name>.<key>``."""
    from safetensors.torch import save

    named = nets.items() if isinstance(nets, Mapping) else [("", nets)]
    state = {}
    for prefix, net in named:
        for k, v in net.state_dict().items():
            state[f"{prefix}.{k}" if prefix else k] = v.detach().cpu().contiguous()
    return save(state)


def load_weights(nets: Nets, blob: bytes) -> None:
    """Restore what :func:`weights_bytes` saved; of named modules, those the bytes hold."""
    from safetensors.torch import load

    tensors = load(blob)
    if not isinstance(nets, Mapping):
        nets.load_state_dict(tensors)
        return
    for prefix, net in nets.items():
        part = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{prefix}.")}
        if part:
            net.load_state_dict(part)


def options_key(fields: Mapping[str, Any], legacy: Mapping[str, Any] | None = None) -> str:
    """A run's key from its identifying options: SHA-1 of their sorted JSON, 12 hex digits.

    ``legacy``: options added after runs existed, with the value that trains as before;
    at that value an option is left out, so the older runs keep their key and resume.
    """
    import json

    kept = {k: v for k, v in fields.items() if not (legacy and k in legacy and legacy[k] == v)}
    return hashlib.sha1(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


# -- hold-out splits -------------------------------------------------------------------------
def hash_fraction(salt: str, item: str, nbytes: int = 8, byteorder: Literal["little", "big"] = "little") -> float:
    """A stable number in [0, 1) for ``item``: the first ``nbytes`` of sha256 of ``salt``, a NUL and ``item``.

    Items whose number is below a fraction are held out: the split is stable as items are
    added and does not depend on their order. (``nbytes=4, byteorder="big"`` is the
    colouriser's, kept so its held-out images stay the same.)
    """
    digest = hashlib.sha256(f"{salt}\0{item}".encode()).digest()
    return int.from_bytes(digest[:nbytes], byteorder) / 2 ** (8 * nbytes)


def held_out_mask(ids: Sequence[str], salt: str, fraction: float = 0.1, **score: Any) -> np.ndarray:
    """Which of ``ids`` are held out: those whose :func:`hash_fraction` is below ``fraction``,
    or, when that picks none or all, the last ``fraction`` of them (at least one trained on)."""
    held = np.array([hash_fraction(salt, i, **score) < fraction for i in ids])
    if held.all() or not held.any():
        held = np.arange(len(ids)) >= max(1, int(len(ids) * (1 - fraction)))
    return held


# -- the model kept per worker process -------------------------------------------------------
