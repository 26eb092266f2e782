"""Commands that run the whole chain or serve it: build, demo, serve; the kept local Prefect server."""

from __future__ import annotations

from flows.cli.options import Command

COMMANDS = [
    Command("build", "the whole chain as one flow", "flows.build:build"),
    Command("demo", "synth + build on the embedded default, then a report", "flows.build:demo", hide=("options",)),
    Command(
        "serve",
        "serve the nightly build and every flow's backfill (needs PREFECT_API_URL)",
        extra="flows.serve:serve_options",
        run="flows.serve:serve_command",
    ),
    Command(
        "api-server",
        "the local Prefect server kept between commands: where it runs; --stop stops it",
        extra="flows.apiserver:cli_options",
        run="flows.apiserver:cli_command",
    ),
]
