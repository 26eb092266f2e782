"""Benchmark: what the colouriser's held-out palette accuracy is worth, and what it costs.

    .venv/bin/python -m bench.colorizer [--size 256] [--epochs 8] [--no-train]

On the 200 synth portraits ``train-colorizer`` uses on an empty workspace, with its
held-out split (10% by id hash), at ``--size``:

1. Baselines that need no network:
   - ``commonest``: every pixel in the commonest training colour;
   - ``semantic_oracle``: every pixel in the commonest training colour of its true
     semantic class (background, skin, face, eye, mouth, hair, clothes), read from the
     synth truth masks: the best a line-art-only colouriser could do if it recognised
     every region perfectly and knew nothing else;
   - ``hint``: the posterised 16x16 colour hint, upsampled.
2. ``train-colorizer`` with the line art alone (``hint_size=0``) and with the colour hint
   (the default), each with the CLI defaults: held-out accuracy and seconds.

Writes ``bench/results/colorizer.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--no-train", action="store_true", help="baselines only")
    ap.add_argument("--out", default=str(HERE / "results" / "colorizer.json"))
    a = ap.parse_args()
    import torch

    from storage.workspace import Workspace
    from tasks.colorizer import ColorizerOptions, colour_hint, held_out, train_colorizer
    from tasks.npr import posterize_classes
    from tasks.synth import draw_portrait

    opts = ColorizerOptions(size=a.size, epochs=a.epochs)
    portraits = [draw_portrait(4000 + opts.seed, i, a.size) for i in range(200)]
    ids = [f"synth-{i}" for i in range(200)]
    held = held_out(ids)
    classes = np.stack([posterize_classes(p.image, opts.num_values) for p in portraits])
    masks = np.stack([p.mask for p in portraits])
    n_colours = opts.num_values**3
    commonest = np.bincount(classes[~held].ravel(), minlength=n_colours).argmax()
    per_class = np.zeros(256, np.int64)
    for c in np.unique(masks):
        per_class[c] = np.bincount(classes[~held][masks[~held] == c], minlength=n_colours).argmax()
    hints = colour_hint(np.stack([p.image for p in portraits]), opts.hint_size, num_values=opts.num_values)
    hint_classes = posterize_classes(hints, opts.num_values)
    result: dict[str, object] = {
        "size": a.size,
        "images": len(ids),
        "held_out_images": int(held.sum()),
        "colours": n_colours,
        "hint_size": opts.hint_size,
        "commonest_accuracy": round(float((classes[held] == commonest).mean()), 4),
        "semantic_oracle_accuracy": round(float((per_class[masks[held]] == classes[held]).mean()), 4),
        "hint_accuracy": round(float((hint_classes[held] == classes[held]).mean()), 4),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))
    if not a.no_train:
        for label, hint_size in (("line_only", 0), ("hinted", opts.hint_size)):
            with tempfile.TemporaryDirectory(prefix="mangaka-bench-") as tmp:
                t0 = time.perf_counter()
                r = train_colorizer(Workspace(tmp), opts.model_copy(update={"hint_size": hint_size}))
                result[f"{label}_accuracy"] = r["palette_accuracy"]
                result[f"{label}_seconds"] = round(time.perf_counter() - t0, 1)
                result[f"{label}_epochs"] = a.epochs
            print(json.dumps(result))
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
