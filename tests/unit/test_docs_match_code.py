"""The README says what the code does: every command and event kind in one, in the other.

Configuration keys have their own check (test_config_table.py). Here: the README's command
table lists exactly the CLI's commands (subcommands of a group as `group sub`), and its
event-log paragraph lists exactly the kinds `events.KINDS` accepts.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from scratch_stage.cli import cli
from scratch_stage.host.events import KINDS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def code_commands(group: click.Group, prefix: str = "") -> set[str]:
    names: set[str] = set()
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            names |= code_commands(command, f"{prefix}{name} ")
        else:
            names.add(prefix + name)
    return names


def readme_commands(text: str) -> set[str]:
    """Command names of the README's "Commands" table, from each row's first cell: the
    leading lower-case words of every `...` span (`config show [--json]` -> config show)."""
    section = text.split("### Commands", 1)[1].split("\n\n", 2)[1]
    names: set[str] = set()
    for row in section.splitlines()[2:]:
        cell = re.split(r"(?<!\\)\|", row)[1]
        for span in re.findall(r"`([^`]+)`", cell):
            words = []
            for word in span.removeprefix("scratch-stage ").split():
                if not re.fullmatch(r"[a-z]+(-[a-z]+)*", word):
                    break
                words.append(word)
            names.add(" ".join(words))
    return names


def readme_event_kinds(text: str) -> set[str]:
    paragraph = text.split("has one JSON object per line", 1)[1].split("\n\n", 1)[0]
    paragraph = paragraph.split('so "why', 1)[0]
    return {k for k in re.findall(r"`([a-z-]+)`", paragraph) if not k.startswith("lock_")}


def test_every_command_is_documented_and_every_documented_command_exists() -> None:
    ours = code_commands(cli)
    documented = readme_commands(README)
    assert ours - documented == set(), "commands missing from the README's table"
    assert documented - ours == set(), "the README lists commands that do not exist"


def test_every_event_kind_is_documented_and_every_documented_kind_exists() -> None:
    documented = readme_event_kinds(README)
    assert set(KINDS) - documented == set(), "event kinds missing from the README"
    assert documented - set(KINDS) == set(), "the README lists event kinds the code never emits"


def test_every_event_kind_is_emitted_somewhere() -> None:
    package = Path(__file__).resolve().parents[2] / "scratch_stage"
    code = "\n".join(p.read_text() for p in package.rglob("*.py"))
    emitted = set(re.findall(r'\.emit\(\s*"([a-z-]+)"', code))
    assert set(KINDS) - emitted == set(), "event kinds nothing emits"


def test_the_readers_see_a_change() -> None:
    assert "status" in readme_commands(README)
    assert "config check" in readme_commands(README)
    shortened = README.replace("| `daemon` |", "| `demon` |")
    assert "daemon" not in readme_commands(shortened)
    assert "mount" in readme_event_kinds(README)
    assert "mount" not in readme_event_kinds(README.replace("`mount`, ", ""))
