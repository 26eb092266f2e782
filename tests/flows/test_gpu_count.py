"""How many GPUs a run's LocalCluster hands out, asked without importing torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows import runtime


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(runtime.GPUS_ENV, raising=False)
    return monkeypatch


def test_the_count_follows_the_machine_and_cuda_visible_devices(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setattr(runtime, "_torch_has_cuda", lambda: True)
    clean_env.setattr(runtime, "_nvidia_devices", lambda: 4)
    assert runtime.visible_gpus() == ["0", "1", "2", "3"]
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert runtime.visible_gpus() == ["3", "1"]  # each GPU worker gets one of these
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "2,-1,0")
    assert runtime.visible_gpus() == ["2"]  # CUDA stops at the first invalid entry
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "")
    assert runtime.local_gpus() == 0
    clean_env.delenv("CUDA_VISIBLE_DEVICES")
    clean_env.setattr(runtime, "_torch_has_cuda", lambda: False)
    assert runtime.local_gpus() == 0  # a CPU build of torch cannot use them


def test_mangaka_gpus_fixes_the_count(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(runtime.GPUS_ENV, "2")
    assert runtime.visible_gpus() == ["0", "1"]
    clean_env.setenv(runtime.GPUS_ENV, "0")
    assert runtime.local_gpus() == 0
    clean_env.setenv(runtime.GPUS_ENV, "two")
    with pytest.raises(ValueError, match="MANGAKA_GPUS"):
        runtime.local_gpus()


def test_the_installed_torch_build_is_read_and_torch_is_not_imported() -> None:
    code = (
        "import sys, importlib.util; from flows import runtime; n = runtime.local_gpus(); "
        "assert 'torch' not in sys.modules, 'torch imported'; print(runtime._torch_has_cuda())"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parents[2], capture_output=True, text=True, check=True
    )
    import torch

    assert r.stdout.strip() == str(torch.version.cuda is not None)
