"""The README renders as its readers see it: every table has its header separator row, and the
commands it names exist."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def tables(text: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of every block of consecutive '|' lines outside code fences."""
    out, block, start, fenced = [], [], 0, False
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("|"):
            if not block:
                start = i
            block.append(line)
        elif block:
            out.append((start, block))
            block = []
    if block:
        out.append((start, block))
    return out


SEPARATOR = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+\s*$")


def cells(line: str) -> int:
    return len(line.strip().strip("|").split("|"))


def test_every_table_has_a_header_separator():
    found = tables(README.read_text(encoding="utf-8"))
    assert len(found) > 5
    for start, lines in found:
        assert len(lines) >= 2 and SEPARATOR.match(lines[1]), f"README line {start}: no separator row"
        assert cells(lines[1]) == cells(lines[0]), f"README line {start}: separator and header differ"


def test_the_checker_catches_a_missing_separator():
    broken = "| a | b |\n| 1 | 2 |\n"
    (start, lines), = tables(broken)
    assert not SEPARATOR.match(lines[1])


def commands(text: str) -> set[str]:
    """The subcommands the README shows in code: fenced blocks and `inline` spans."""
    code = re.findall(r"```.*?```", text, re.S) + re.findall(r"`[^`\n]+`", text)
    return {m for block in code for m in re.findall(r"(?:^|`|\$ )geonorm ([a-z][a-z-]+)", block, re.M)}


@pytest.mark.parametrize("command", sorted(commands(README.read_text(encoding="utf-8"))))
def test_every_command_the_readme_names_exists(command):
    from geonorm_core import cli

    assert command in cli.COMMANDS or command == "prove", command
