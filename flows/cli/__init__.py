"""The ``mangaka`` command line: parse, start one Prefect API (and a Dask cluster), run a flow.

Commands are tables by role (``corpus``, ``learn``, ``render``, ``ops``); their options come
from their flows (:mod:`flows.cli.options`); only the chosen flow is imported. Exit codes:
0 done (quarantine is reported, not a failure), 1 the run failed, 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from flows import UsageError
from flows.cli import corpus, learn, ops, render
from flows.cli.options import Command, add_options, flow_kwargs, load

log = logging.getLogger("mangaka")
GROUPS = {"corpus": corpus.COMMANDS, "models": learn.COMMANDS, "renderings": render.COMMANDS, "runs": ops.COMMANDS}
COMMANDS: dict[str, Command] = {c.name: c for group in GROUPS.values() for c in group}


def _global_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"{g}:\n" + "\n".join(f"  {c.name:<16} {c.help}" for c in cs) for g, cs in GROUPS.items())
    p = argparse.ArgumentParser(
        prog="mangaka",
        description="A dataset factory for anime-portrait research.",
        epilog=f"{listing}\n\n`mangaka COMMAND --help` lists a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ws = os.environ.get("MANGAKA_WORKSPACE", "./workspace")
    p.add_argument("--workspace", default=ws, help=f"local directory or s3://bucket/prefix (default {ws})")
    p.add_argument("--dask-address", help="tcp://HOST:PORT of an existing Dask scheduler (default: a LocalCluster)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--workers", type=int, help="LocalCluster worker processes (default: cores)")
    p.add_argument("-v", "--verbose", action="store_true", help="show every task's log")
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="see below")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def command_parser(cmd: Command) -> argparse.ArgumentParser:
    """The parser of one command: its flow's options, then the command's own."""
    p = argparse.ArgumentParser(prog=f"mangaka {cmd.name}", description=cmd.help)
    if cmd.flow:
        add_options(p, cmd, load(cmd.flow))
        p.add_argument("--json", action="store_true", help="print the result as JSON")
    if cmd.extra:
        load(cmd.extra)(p)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Global options, the command, and the command's options in one namespace."""
    top = _global_parser().parse_args(argv)
    if top.rest in (["-h"], ["--help"]):
        _print_help(top.command)
    args = command_parser(COMMANDS[top.command]).parse_args(top.rest)
    vars(args).update({k: v for k, v in vars(top).items() if k != "rest"})
    return args


def _print_help(command: str) -> None:
    """``mangaka COMMAND --help``: the kept text when nothing it depends on changed (see
    :mod:`flows.cli.helpcache`), else built from the flow and kept. Exits 0, as argparse does."""
    from flows.cli import helpcache

    text = helpcache.cached(command)
    if text is None:
        text = command_parser(COMMANDS[command]).format_help()
        helpcache.keep(command, text)
    sys.stdout.write(text)
    raise SystemExit(0)


def _execute(cmd: Command, args: argparse.Namespace) -> int:
    from flows import RunConfig
    from storage.location import exists_dir, exists_file
    from storage.workspace import check_name

    if args.workers is not None and args.workers <= 0:
        raise UsageError(f"--workers must be positive, not {args.workers}")
    config = RunConfig(args.workspace, args.dask_address, args.device, args.workers)
    for dest, value in vars(args).items():  # names that become parts of keys (the flows check them too)
        if (last := dest.rsplit(".", 1)[-1]) in ("name", "model") and isinstance(value, str):
            check_name(value, f"{last} (--{last})")
    if cmd.run is not None:
        return int(load(cmd.run)(args, config))
    module, _, name = str(cmd.flow).partition(":")
    flow = load(cmd.flow)
    params = flow_kwargs(cmd, flow, args, config)
    for dest, kind in cmd.paths.items():  # refused in a second, not after a server start
        head, _, field = dest.partition(".")
        url = getattr(params.get(head), field, None) if field else params.get(head)
        if url and not ((kind != "file" and exists_dir(url)) or (kind != "dir" and exists_file(url))):
            raise UsageError(f"{url} " + ("is not a folder" if kind == "dir" else "does not exist"))
    if precheck := getattr(sys.modules[module], f"precheck_{name}", None):
        precheck(params, set(vars(args)))
    from flows.runtime import launch  # Prefect and Dask: only for the commands that run a flow

    result = launch(flow, config, **params)
    describe = getattr(sys.modules[module], f"describe_{name}", None)
    print(describe(result, params) if describe and not args.json else json.dumps(result, indent=1, default=str))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from flows import ShardFailures
    from storage.workspace import WorkspaceError

    quiet_libraries(args.verbose)
    try:
        return _execute(COMMANDS[args.command], args)
    except (UsageError, WorkspaceError, FileNotFoundError, ValidationError) as exc:
        msg = str(exc).splitlines()[0] if not isinstance(exc, ValidationError) else _validation_line(exc)
        print(f"mangaka {args.command}: {msg}", file=sys.stderr)
        return 2
    except ShardFailures as exc:
        print(f"mangaka {args.command}: {exc}; run it again to redo only those shards", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mangaka {args.command}: interrupted; run it again to resume", file=sys.stderr)
        return 1
    except Exception as exc:  # the run failed: say why in one line, details with -v
        log.debug("failure", exc_info=True)
        print(f"mangaka {args.command}: failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1


def quiet_libraries(verbose: bool) -> None:
    """The command line's logging: warnings (every task's log with ``verbose``), libraries quieter."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().handlers[0].setLevel(level)
    for name in ("distributed", "tornado", "asyncio", "botocore", "aiobotocore", "s3fs"):
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.ERROR)
    if not verbose:
        # Quiet terminal, full record: runs still log at INFO to the Prefect API (the UI);
        # only the console handlers (here and in every Dask worker) show warnings alone.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")


def _validation_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where, msg = ".".join(map(str, err.get("loc", ()))), str(err.get("msg", "")).removeprefix("Value error, ")
    return f"invalid option {where}: {msg}" if where else f"invalid options: {msg}"
