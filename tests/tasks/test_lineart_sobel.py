"""The ``sobel`` line-art method: thin lines on edges, nothing on flat paper, registered."""

from __future__ import annotations

import cv2
import numpy as np

from tasks.lineart import METHODS, boundary_f1, dataset_f1, producer_version, render
from tasks.lineart.sobel import SOBEL, sobel_nms
from tasks.synth import draw_portrait


def disc(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((size, size, 3), 235, np.uint8)
    cv2.circle(image, (size // 2, size // 2), size // 3, (40, 60, 200), -1)
    truth = np.full((size, size), 255, np.uint8)
    cv2.circle(truth, (size // 2, size // 2), size // 3, 0, 1)
    return image, truth


def test_sobel_draws_a_thin_outline_of_a_disc() -> None:
    image, truth = disc()
    drawing = sobel_nms(image)
    assert drawing.shape == image.shape[:2] and drawing.dtype == np.uint8
    assert set(np.unique(drawing)) <= {0, 255}
    assert boundary_f1(drawing, truth)["f1"] > 0.95
    # thin: about one pixel per unit of the circle's length, not a band (2 pi r = 201 px)
    assert (drawing == 0).sum() < 2.5 * 2 * np.pi * 32


def test_sobel_leaves_flat_and_tiny_noise_as_paper() -> None:
    assert (sobel_nms(np.full((64, 64, 3), 128, np.uint8)) == 255).all()
    assert sobel_nms(np.zeros((1, 1, 3), np.uint8)).shape == (1, 1)


def test_sobel_is_registered_with_its_parameters_in_its_version() -> None:
    assert METHODS["sobel"].params == SOBEL and METHODS["sobel"].model is None
    image, _ = disc()
    assert (render("sobel", image) == sobel_nms(image, **SOBEL)).all()
    assert producer_version("sobel") != producer_version("canny")
    assert producer_version("sobel") == producer_version("sobel")


def test_sobel_follows_synth_portraits_as_well_as_canny() -> None:
    portraits = [draw_portrait(11, i, 128) for i in range(8)]
    truths = [p.lines for p in portraits]
    sobel = dataset_f1([render("sobel", p.image) for p in portraits], truths)["f1"]
    canny = dataset_f1([render("canny", p.image) for p in portraits], truths)["f1"]
    assert sobel > 0.7 and sobel > canny - 0.05
