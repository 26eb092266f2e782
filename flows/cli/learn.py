"""Commands that train and apply models: the segmenter, GauGAN, line art, styles, the colouriser."""

from __future__ import annotations

from flows.cli.options import Command

COMMANDS = [
    Command(
        "train-unet",
        "train the segmenter on the annotations; checkpoints in models/unet",
        "flows.segment:train_unet_flow",
        paths={"options.encoder_weights": "file"},
    ),
    Command("pseudolabel", "corpus/masks + corpus/confidence for every corpus image", "flows.pseudolabel:pseudolabel"),
    Command(
        "train-gaugan",
        "train GauGAN (VAE encoder first, then SPADE G + D); resumes",
        "flows.gaugan:train_gaugan_flow",
        metavars={"options.checkpoint_every": "N"},
        paths={"options.vgg_weights": "file"},
    ),
    Command(
        "generate",
        "one portrait per class-id mask PNG in --masks",
        "flows.gaugan:generate_flow",
        ("out",),
        paths={"masks": "dir", "style_image": "file"},
    ),
    Command("eval-gaugan", "semantic mIoU and pixel accuracy of generated images", "flows.gaugan:eval_gaugan_flow"),
    Command(
        "train-lineart",
        "train the ArtLine-style line-art model; checkpoints in models/artline",
        "flows.lineart:train_lineart_flow",
        paths={"options.pairs": "dir", "options.vgg_weights": "file"},
    ),
    Command(
        "train-style",
        "train a fast (feed-forward) style model for a style image",
        "flows.style:train_style_flow",
        paths={"style_image": "file", "options.vgg_weights": "file"},
    ),
    Command("train-colorizer", "train the line-drawing colouriser", "flows.style:train_colorizer_flow"),
]
