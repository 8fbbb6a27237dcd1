"""The `thinkube` command.

    thinkube cloud offers|colab|ls|rm ...     cloud GPUs on RunPod (thinkube_spawner.runpod)
    thinkube hub [--ip] [--port] [--data-dir]  JupyterHub on this machine (thinkube_spawner.hub)
    thinkube jobs submit|ls|status|logs|...    GPU jobs in the hub's queue (thinkube_spawner.jobs_cli)
    thinkube train CONFIG.yaml [--dry-run]      a fine-tuning job in that queue (thinkube_spawner.jobs_cli)
    thinkube token create|list|revoke          expiring hub tokens for jobs (thinkube_spawner.jobs_cli)

Each command group lives in its own module and adds itself to the parser with a
`register(subparsers)` function listed in COMMAND_GROUPS. A command
is a `func(args) -> int` set with `set_defaults`; it raises `CommandError` for a failure to
report. `main()` turns failures into one line on stderr and a non-zero exit status: this is
the only place that exits; library and hub code never do.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable
from importlib import metadata

from thinkube_spawner import hub as hub_commands
from thinkube_spawner import jobs_cli
from thinkube_spawner.runpod import commands as cloud_commands
from thinkube_spawner.runpod.commands import CommandError

PROG = "thinkube"
COMMAND_GROUPS: list[Callable[[argparse._SubParsersAction], object]] = [
    cloud_commands.register,
    hub_commands.register,
    jobs_cli.register,
]


def _version() -> str:
    try:
        return metadata.version("thinkube-hub")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="thinkube-hub: GPUs from what is actually free, in the lab or in the cloud.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more detail on stderr (-v progress and retries, -vv debug)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for register in COMMAND_GROUPS:
        register(subparsers)
    return parser


def _log_to_stderr(verbosity: int) -> tuple[logging.Handler, int]:
    """Show thinkube's own log on stderr (ERROR; INFO with -v; DEBUG with -vv) while a
    command runs. Returns what `_stop_logging` needs to undo it."""
    logger = logging.getLogger("thinkube")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(
        logging.ERROR if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    )
    return handler, previous


def _stop_logging(state: tuple[logging.Handler, int]) -> None:
    handler, previous = state
    logger = logging.getLogger("thinkube")
    logger.removeHandler(handler)
    logger.setLevel(previous)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging_state = _log_to_stderr(args.verbose)
    try:
        return _dispatch(args)
    finally:
        _stop_logging(logging_state)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except CommandError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.verbose:
            traceback.print_exc()
        detail = str(err).splitlines()[0] if str(err) else ""
        print(f"{PROG}: unexpected error: {type(err).__name__}: {detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
