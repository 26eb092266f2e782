"""Commands that bring data in and out: synth, ingest, augment, annotate, export, status."""

from __future__ import annotations

from flows.cli.options import Command

COMMANDS = [
    Command("synth", "draw anime-style portraits with exact truth", "flows.synth:synth", ("out",)),
    Command(
        "ingest-images",
        "add images (folder, .tar, s3://) to corpus/images",
        "flows.ingest:ingest_images",
        ("src",),
        paths={"src": "any"},
    ),
    Command(
        "ingest-labelme",
        "add labelme annotations to annotated/images + annotated/masks",
        "flows.labelme:ingest_labelme",
        ("src",),
        {"src": "DIR"},
        models={"options": ("", ("size", "fit", "max_pixels", "max_bytes"))},
        paths={"src": "dir"},
    ),
    Command(
        "annotate",
        "open the labelme GUI on DIR with the workspace's labels",
        extra=lambda p: p.add_argument("dir", metavar="DIR", help="a folder of labelme files"),
        run="flows.labelme:annotate_command",
    ),
    Command("augment", "augmented/images + augmented/masks from annotated/*", "flows.augment:augment"),
    Command(
        "export-labelme",
        "pseudo-labels as labelme files, to correct and ingest again",
        "flows.export:export_labelme",
        ("out",),
        {"lowest_confidence": "K"},
    ),
    Command("export", "one PNG per item of an array", "flows.export:export", ("array", "out")),
    Command(
        "status",
        "coverage per stage and the quarantine",
        extra=lambda p: p.add_argument("--json", action="store_true", help="print the status as JSON"),
        run="flows.report:status_command",
    ),
]
