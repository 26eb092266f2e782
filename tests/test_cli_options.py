"""The command line is generated from the flows: help for every option, the flows' defaults, one table of names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import COMMANDS, command_parser, parse_args
from flows.cli.options import flow_kwargs, load
from flows.runtime import RunConfig


def _options(name: str) -> list[tuple[str, str]]:
    return [
        (a.option_strings[-1] if a.option_strings else a.dest, a.help or "")
        for a in command_parser(COMMANDS[name])._actions
        if a.dest != "help"
    ]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_of_every_command_is_explained(name: str) -> None:
    missing = [flag for flag, text in _options(name) if not re.sub(r"\(default: [^)]*\)", "", text).strip()]
    assert not missing, f"mangaka {name}: no help for {missing}"


def test_top_level_help_starts_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from flows.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'prefect', 'distributed', 'zarr', 'cv2') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pseudolabel" in out and "render-lineart" in out  # the command table
    assert "HEAVY []" in out, out


def test_left_out_options_are_the_flows_own_defaults() -> None:
    from tasks.pseudolabel import PseudolabelOptions

    config = RunConfig("ws", device="cpu")
    cmd = COMMANDS["pseudolabel"]
    kwargs = flow_kwargs(cmd, load(cmd.flow or ""), parse_args(["pseudolabel"]), config)
    assert kwargs == {"workspace": "ws", "options": PseudolabelOptions(device="cpu")}
    given = parse_args(["--device", "cpu", "pseudolabel", "--batch-size", "3", "--flip-tta", "--shards", "1:2"])
    kwargs = flow_kwargs(cmd, load(cmd.flow or ""), given, config)
    assert kwargs["options"] == PseudolabelOptions(batch_size=3, flip_tta=True, device="cpu")
    assert kwargs["shards"] == "1:2" and "force" not in kwargs


def test_renamed_and_prefixed_options_reach_their_fields() -> None:
    cmd = COMMANDS["render-style"]
    args = parse_args(["render-style", "--method", "npr", "--name", "n", "--fast-size", "64", "--gatys-epochs", "7"])
    kwargs = flow_kwargs(cmd, load(cmd.flow or ""), args, RunConfig("ws"))
    assert kwargs["fast_options"].size == 64 and kwargs["gatys_options"].max_num_epochs == 7
    assert kwargs["gatys_options"].save_epochs == 0  # the flow's own default for the rest of the model


def test_bad_choices_and_lists_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["render-lineart", "--method", "nope"], ["build", "--stages", "augment,nope"]):
        with pytest.raises(SystemExit) as exc:
            parse_args(argv)
        assert exc.value.code == 2
    assert "nope" in capsys.readouterr().err


def test_every_line_art_method_is_offered_everywhere() -> None:
    """The registry is the one list: the CLI's choices, the UI form's enum, build's stage."""
    from flows.build import _lineart_methods
    from flows.lineart import render_lineart
    from tasks.lineart import METHODS

    action = next(a for a in command_parser(COMMANDS["render-lineart"])._actions if a.dest == "method")
    assert set(action.choices or ()) == set(METHODS)
    schema = render_lineart.parameters.model_dump()
    method = schema["properties"]["method"]
    enum = method.get("enum") or next(d["enum"] for d in schema.get("definitions", {}).values() if "enum" in d)
    assert set(enum) == set(METHODS)
    free = {m for m, spec in METHODS.items() if spec.model is None}
    assert {"canny", "xdog", "sobel"} <= free

    class Untrained:
        ws = None

    import flows.build as build

    real = build.has_tag
    build.has_tag = lambda ws, model, tag="latest": False  # a workspace with no trained model
    try:
        assert set(_lineart_methods(Untrained())) == free  # type: ignore[arg-type]
    finally:
        build.has_tag = real


def test_serve_offers_a_backfill_of_every_workspace_command() -> None:
    from flows.serve import workspace_flows

    flows = workspace_flows()
    expected = {load(c.flow).name for c in COMMANDS.values() if c.flow and c.name != "demo"}
    assert {"render-lineart", "pseudolabel", "build-dataset", "render-style"} <= set(flows)
    assert set(flows) == {n for n in expected if n in flows} and "demo" not in flows


def test_shard_ranges_are_parsed_once_and_bad_ones_are_usage_errors() -> None:
    from flows import UsageError
    from flows.shards import parse_shards

    assert parse_shards("2:5") == (2, 5) and parse_shards(":3") == (None, 3) and parse_shards("4") == (4, None)
    for bad in ("a:b", "1:x", "-1:2"):
        with pytest.raises(UsageError, match="A:B"):
            parse_shards(bad)


def test_a_command_help_is_kept_and_shown_without_importing_its_flow(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from flows.cli import main\n"
        "try:\n    main(['ingest-images', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "print('HEAVY', [m for m in ('prefect', 'torch', 'distributed') if m in sys.modules])\n"
    )
    env = {**os.environ, "MANGAKA_CACHE_DIR": str(tmp_path), "COLUMNS": "100"}

    def run() -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout

    built = run()
    assert "--jpeg-quality" in built and "HEAVY ['prefect'" in built  # built from the flow the first time
    (kept,) = tmp_path.glob("help-ingest-images-*.txt")
    again = run()
    assert "HEAVY []" in again and again.split("HEAVY")[0] == built.split("HEAVY")[0]
    assert kept.read_text() == built.split("HEAVY")[0]
    env["COLUMNS"] = "60"  # anything the text depends on: built anew, the old text replaced
    narrow = run()
    assert "HEAVY ['prefect'" in narrow and len(list(tmp_path.glob("help-ingest-images-*.txt"))) == 1
    assert max(len(line) for line in narrow.splitlines() if "HEAVY" not in line) <= 60
