"""The three image conventions of mangaka, by name, and the conversions between them.

- **images** (numpy; storage, OpenCV, PIL): RGB ``(N, H, W, 3)`` or ``(H, W, 3)`` uint8 in
  0..255. Beside them: masks ``(N, H, W)`` uint8 class ids (255 = ignore) and drawings
  ``(N, H, W)`` uint8 (0 = ink, 255 = paper).
- **unit** tensors (torch; the segmenter, line art, fast style, the colouriser): RGB
  ``(N, 3, H, W)`` float32 in [0, 1].
- **signed** tensors (torch; GauGAN's generator, whose output is a tanh, and its encoder):
  RGB ``(N, 3, H, W)`` float32 in [-1, 1].

The tensors keep the images' memory order (``permute`` of an NHWC array, then ``float``):
channels-last strides, which the convolutions take as they are.
"""

from __future__ import annotations

import numpy as np
import torch


def to_unit(images: np.ndarray | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """RGB ``(N, H, W, 3)`` uint8 images (host arrays, or tensors already on a device) -> unit
    ``(N, 3, H, W)`` float32 in [0, 1].

    With ``device`` the uint8 images move first (a quarter of the bytes of floats).
    """
    t = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if device is not None:
        t = t.to(device)
    return t.permute(0, 3, 1, 2).float().div_(255)


def to_float255(images: np.ndarray) -> torch.Tensor:
    """RGB ``(N, H, W, 3)`` uint8 images -> ``(N, 3, H, W)`` float32 in [0, 255] (to resize before scaling)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()


def signed_from_float255(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` float in [0, 255] -> signed, in [-1, 1]."""
    return x / 127.5 - 1


def from_signed(x: torch.Tensor) -> torch.Tensor:
    """Signed ``(N, 3, H, W)`` in [-1, 1] (clamped) -> ``(N, 3, H, W)`` uint8 in 0..255, on the CPU."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()


def nchw_to_images(x: torch.Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` uint8 -> RGB images ``(N, H, W, 3)`` uint8 (numpy)."""
    return x.permute(0, 2, 3, 1).numpy()
