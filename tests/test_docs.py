"""Every code block of README.rst, of the documentation (docs/) and of the
docstrings it renders works as pasted.

A ``.. code-block:: python`` block runs in a fresh interpreter, in an empty
directory; one that defines ``test_`` functions is a test file, run by
pytest. A ``.. code-block:: console`` block lists commands (``$ ...``) run
from the project's root, each followed by the lines it prints: digits stand
for any number (process ids), a line ``...`` for any lines. Literal blocks
(``::``) are commands for a shell or output shown for reading; the two
commands at the top are the ones CI runs.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import SOURCE

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.rst"


class Block(NamedTuple):
    language: str  # "python", "console", or "" for a literal block
    where: str  # file:line of the directive, or of the paragraph ending in "::"
    text: str


def blocks(text: str, source: str, first_line: int = 1) -> list[Block]:
    """The code blocks of reStructuredText ``text``, dedented."""
    lines = text.splitlines()
    found = []
    for number, line in enumerate(lines):
        directive = re.match(r"\s*\.\. code-block:: *(\w+)", line)
        if directive is not None:
            language = directive.group(1)
        elif line.endswith("::") and not line.lstrip().startswith(".."):
            language = ""
        else:
            continue
        indent = len(line) - len(line.lstrip())
        body: list[str] = []
        for following in lines[number + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        text = "\n".join(body).strip("\n")
        margin = min(len(b) - len(b.lstrip()) for b in body if b.strip())
        code = "\n".join(b[margin:] for b in text.split("\n"))
        found.append(Block(language, f"{source}:{first_line + number}", code))
    return found


def _documented_modules() -> list[str]:
    """The modules whose docstrings the documentation renders (automodule)."""
    names = set()
    for page in sorted((ROOT / "docs").rglob("*.rst")):
        names.update(re.findall(r"^\.\. automodule:: (\S+)", page.read_text(), re.MULTILINE))
    return sorted(names)


def _all_blocks() -> list[Block]:
    found = blocks(README.read_text(encoding="utf-8"), "README.rst")
    for page in sorted((ROOT / "docs").rglob("*.rst")):
        found += blocks(page.read_text(encoding="utf-8"), str(page.relative_to(ROOT)))
    for name in _documented_modules():
        if name == "atfork.pytest_plugin":
            continue  # needs pytest, which the documentation does not
        module = importlib.import_module(name)
        documented = [(name, module)]
        documented += [(f"{name}.{member}", getattr(module, member)) for member in module.__all__]
        for qualified, obj in documented:
            doc = inspect.getdoc(obj) if inspect.isroutine(obj) or inspect.isclass(obj) else None
            doc = module.__doc__ if obj is module else doc
            if doc:
                found += blocks(inspect.cleandoc(doc), f"{qualified} docstring")
    return found


BLOCKS = _all_blocks()
README_BLOCKS = [b for b in BLOCKS if b.where.startswith("README.rst:")]


def _ids(kind: str) -> list[Block]:
    return [b for b in BLOCKS if b.language == kind]


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ATFORK_INTEGRATIONS", "PYTHONPATH")}
    env["PYTHONPATH"] = SOURCE
    env["COLUMNS"] = "80"  # argparse wraps its help to the terminal's width
    return env


def test_the_readme_has_blocks_of_each_kind() -> None:
    """The parser finds the README's blocks and the documented modules (finding none passes all)."""
    assert {"python", "console", ""} <= {b.language for b in README_BLOCKS}
    assert len([b for b in README_BLOCKS if b.language == "python"]) >= 2
    assert len([b for b in BLOCKS if b.language == "python"]) >= 6
    assert "atfork.integrations.threading" in _documented_modules()


def test_ci_runs_the_readme_test_command() -> None:
    """The README shows the two commands, and .ci/run runs exactly its test command."""
    commands = [
        b.text for b in README_BLOCKS if b.language == "" and b.text.startswith("python -m pip")
    ]
    assert [
        "python -m pip install . && python -m atfork demo",
        "python -m pip install tox tox-uv && python -m tox",
    ] == commands[:2]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert commands[1] == ci[-1]


@pytest.mark.parametrize("block", _ids("python"), ids=lambda b: b.where)
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    """The block runs to its end in a fresh interpreter (under pytest if it holds tests)."""
    if re.search(r"^def test_", block.text, re.MULTILINE):
        (tmp_path / "test_example.py").write_text(block.text + "\n", encoding="utf-8")
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_example.py",
        ]
    else:
        command = [sys.executable, "-c", block.text]
    done = subprocess.run(
        command,
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 0 == done.returncode, f"{block.where}:\n{done.stdout}\n{done.stderr}"


def _line_matches(expected: str, actual: str) -> bool:
    pattern = r"\d+".join(re.escape(part) for part in re.split(r"\d+", expected.rstrip()))
    return re.fullmatch(pattern, actual.rstrip()) is not None


def _matches(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` is ``expected``, where digits match any number and
    a line ``...`` matches any lines."""
    segments: list[list[str]] = [[]]
    for line in expected:
        if line == "...":
            segments.append([])
        else:
            segments[-1].append(line)

    def at(segment: list[str], start: int) -> bool:
        return start + len(segment) <= len(actual) and all(
            _line_matches(e, a) for e, a in zip(segment, actual[start:])
        )

    if len(segments) == 1:
        return len(expected) == len(actual) and at(expected, 0)
    first, *middle, last = segments
    if not at(first, 0):
        return False
    position = len(first)
    for segment in middle:  # the earliest place each fits leaves the most room for the rest
        found = next((i for i in range(position, len(actual) + 1) if at(segment, i)), None)
        if found is None:
            return False
        position = found + len(segment)
    return len(actual) - len(last) >= position and at(last, len(actual) - len(last))


def _sessions(text: str) -> list[tuple[str, list[str]]]:
    sessions: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            sessions.append((line[2:], []))
        else:
            sessions[-1][1].append(line)
    return sessions


@pytest.mark.parametrize("block", _ids("console"), ids=lambda b: b.where)
def test_console_block_prints_what_it_shows(block: Block) -> None:
    """Each command of the block prints the lines shown below it (stdout and stderr, in order)."""
    for command, expected in _sessions(block.text):
        argv = shlex.split(command)
        env = _environment()
        env.pop("PYTHONUNBUFFERED", None)  # a user's terminal: streams buffered as usual
        while "=" in argv[0]:  # NAME=value before the command
            name, _, value = argv.pop(0).partition("=")
            env[name] = value
        assert "python" == argv[0], command
        done = subprocess.run(
            [sys.executable, *argv[1:]],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
            check=False,
        )
        actual = done.stdout.splitlines()
        assert _matches(expected, actual), f"{block.where}: $ {command}\n{done.stdout}"
