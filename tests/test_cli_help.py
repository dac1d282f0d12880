"""Every command's ``--help``, as a person reads it (issue 14): Typer's conventional style
(no ``<bool>`` after a flag, no reStructuredText markup), one capitalisation (help starts
with a capital letter), and an example in every group's help."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from farthing.cli import app

RST = re.compile(r"``|:(meth|func|class|mod|data|attr):`")


def commands() -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, command) for the root and every group and command under it."""

    def walk(path: tuple[str, ...], command: Any) -> Iterator[tuple[tuple[str, ...], Any]]:
        yield path, command
        if _is_group(command):
            for name, child in sorted(command.commands.items()):
                yield from walk((*path, name), child)

    yield from walk((), typer.main.get_command(app))


def _is_group(command: object) -> bool:
    # Typer builds its commands on its own copy of Click: a group is what has subcommands.
    return isinstance(getattr(command, "commands", None), dict)


PATHS = [path for path, _ in commands()]


def test_the_walk_finds_every_group() -> None:
    groups = {" ".join(path) for path, command in commands() if _is_group(command)}
    assert {"", "issuer", "wallet", "vendor", "issuer cards", "wallet cards"} <= groups


@pytest.mark.parametrize("path", PATHS, ids=lambda path: " ".join(path) or "farthing")
def test_help_follows_the_rules(path: tuple[str, ...]) -> None:
    command = dict(commands())[path]
    shown = CliRunner(env={"COLUMNS": "120"}).invoke(app, [*path, "--help"])
    assert shown.exit_code == 0, shown.output
    text = shown.output
    assert "<bool>" not in text
    assert not RST.search(text), RST.search(text)
    assert not RST.search(command.help or "")
    if _is_group(command):
        assert "Example" in (command.help or ""), f"{path}: a group's help shows an example"
    for line in _helps(command):
        assert line[:1].isupper(), f"{' '.join(path)}: help starts with a capital: {line!r}"


def _helps(command: Any) -> Iterator[str]:
    if command.help:
        yield command.help.strip()
    for param in command.params:
        help_text = getattr(param, "help", None)
        if help_text:
            yield help_text.strip()


def test_version_is_printed_by_the_root_command() -> None:
    from farthing import __version__

    shown = CliRunner().invoke(app, ["--version"])
    assert shown.exit_code == 0, shown.output
    assert shown.output == f"farthing {__version__}\n"
