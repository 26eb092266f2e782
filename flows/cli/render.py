"""Commands that render the corpus (line art, styles) and stylise one image."""

from __future__ import annotations

from flows.cli.options import Command

COMMANDS = [
    Command("render-lineart", "corpus/lineart/<method> for every corpus image", "flows.lineart:render_lineart"),
    Command(
        "render-style",
        "corpus/styled/NAME for every corpus image",
        "flows.style:render_style",
        models={"fast_options": ("fast-", ("size", "steps")), "gatys_options": ("gatys-", ("max_num_epochs",))},
        flags={"gatys_options.max_num_epochs": "--gatys-epochs"},
        paths={"style_image": "file"},
    ),
    Command(
        "stylize",
        "one image, Gatys et al. with the options of the MXNet neural-art example",
        "flows.style:stylize_flow",
        ("content", "style", "out"),
        paths={"content": "file", "style": "file", "options.vgg_weights": "file"},
    ),
]
