"""What the training loops share: seeded random generators and optimiser state as safetensors.

A loop that draws every batch's randomness from ``seeded_generator(seed, phase, step)``
needs no random-number state in its checkpoints: resuming replays the same draws. The
optimisers' moments go to safetensors (never pickle); their hyper-parameters to JSON.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch


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


def load_optimizer_state(optimizers: dict[str, torch.optim.Optimizer], blob: bytes, groups: dict[str, Any]) -> None:
    """Restore what :func:`optimizer_state` saved."""
    from safetensors.torch import load

    tensors = load(blob)
    for name, opt in optimizers.items():
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            owner, pid, what = key.split(".", 2)
            if owner == name:
                state.setdefault(int(pid), {})[what] = value
        opt.load_state_dict({"state": state, "param_groups": groups[name]})
