"""docs/cli.md documents every `thinkube` command and every option it takes."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from thinkube_spawner.cli import build_parser

DOC = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, its parser) for every command that takes options, leaves last."""
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subcommands:
        for name, child in action.choices.items():
            yield from commands(child, (*path, name))
    if not subcommands:
        yield path, parser


def options(parser: argparse.ArgumentParser) -> list[str]:
    """The long option strings a person can use (help and hidden ones aside)."""
    return [
        max(action.option_strings, key=len)
        for action in parser._actions
        if action.option_strings
        and action.help != argparse.SUPPRESS
        and not isinstance(action, argparse._HelpAction)
    ]


def section(heading: str) -> str:
    """The text under `heading` up to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\n", DOC, re.MULTILINE)
    assert match, f"docs/cli.md has no heading {heading!r}"
    level = len(match.group(1))
    rest = DOC[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def test_every_command_and_option_is_documented():
    found = list(commands(build_parser()))
    assert {" ".join(path) for path, _ in found} >= {
        "hub",
        "cloud offers",
        "cloud colab",
        "cloud ls",
        "cloud rm",
    }
    for path, parser in found:
        # A command's own section; cloud commands share the options listed for all of them.
        text = section(f"`thinkube {' '.join(path)}`")
        if path[0] == "cloud":
            text = section("`thinkube cloud`")
        missing = [option for option in options(parser) if f"`{option}" not in text]
        assert missing == [], f"thinkube {' '.join(path)}: {missing} not in docs/cli.md"
    for option in options(build_parser()):
        assert f"{option}" in DOC.split("## ", 1)[0], option
