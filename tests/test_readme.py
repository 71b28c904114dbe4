"""The README and docs/ render as their readers see them: every table has its header separator row,
every command they show exists, every link points to a file of the repository, nothing points to a
file users do not have, and docs/identities.md states what proofs/ proves."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_LINES = 150   # a newcomer reads it in a minute


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
    return len(re.split(r"(?<!\\)\|", line.strip().strip("|")))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_table_has_a_header_separator(page):
    for start, lines in tables(page.read_text(encoding="utf-8")):
        assert len(lines) >= 2 and SEPARATOR.match(lines[1]), f"{page.name} line {start}: no separator row"
        assert cells(lines[1]) == cells(lines[0]), f"{page.name} line {start}: separator and header differ"


def test_the_pages_have_tables_to_check():
    assert sum(len(tables(p.read_text(encoding="utf-8"))) for p in PAGES) > 10


def test_the_checker_catches_a_missing_separator():
    broken = "| a | b |\n| 1 | 2 |\n"
    (start, lines), = tables(broken)
    assert not SEPARATOR.match(lines[1])


def commands(text: str) -> set[str]:
    """The subcommands a page shows in code: fenced blocks and `inline` spans."""
    code = re.findall(r"```.*?```", text, re.S) + re.findall(r"`[^`\n]+`", text)
    return {m for block in code for m in re.findall(r"(?:^|`|\$ )geonorm ([a-z][a-z-]+)", block, re.M)}


SHOWN = sorted({(p.name, c) for p in PAGES for c in commands(p.read_text(encoding="utf-8"))})


@pytest.mark.parametrize(("page", "command"), SHOWN)
def test_every_command_shown_exists(page, command):
    from geonorm_core import cli

    assert command in cli.COMMANDS or command == "prove", f"{page}: geonorm {command}"


def links(text: str) -> list[str]:
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_points_to_a_file_of_the_repository(page):
    for target in links(page.read_text(encoding="utf-8")):
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name}: link to {target}, which does not exist"


def test_no_page_or_module_points_to_files_users_do_not_have():
    """The team's science and design notes are not part of the repository: nothing may cite them."""
    files = [*PAGES, *ROOT.glob("geonorm_core/**/*.py"), *ROOT.glob("geonorm_core/**/*.[ch]"),
             *ROOT.glob("geonorm_core/**/*.pyx"), *ROOT.glob("proofs/*.py"), *ROOT.glob("tests/*.py"),
             *ROOT.glob("benchmarks/*.py"), ROOT / "requirements-models.txt"]
    names = ("SCIENCE" + ".md", "DESIGN" + ".md")
    bad = [f"{f.relative_to(ROOT)}: {n}" for f in files for n in names if n in f.read_text(encoding="utf-8")]
    assert not bad, bad


def test_readme_is_read_in_a_minute():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= README_LINES


def test_identities_page_states_what_proofs_prove():
    """docs/identities.md holds `python -m proofs --markdown` between its markers, unchanged."""
    text = (ROOT / "docs" / "identities.md").read_text(encoding="utf-8")
    begin, end = "<!-- begin: python -m proofs --markdown -->\n", "<!-- end: python -m proofs --markdown -->"
    shown = text[text.index(begin) + len(begin):text.index(end)]
    made = subprocess.run([sys.executable, "-m", "proofs", "--markdown"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
    assert shown == made, "docs/identities.md is stale: paste the output of `python -m proofs --markdown`"


def test_ci_runs_the_readmes_test_command():
    readme = README.read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert f"```bash\n{ci}\n```" in readme, "the README's test command and .ci/run's last line differ"
