"""The container files of the repository, parsed for the tests: Dockerfile, singularity.def, docs/hpc.rst.

No container engine is needed: the files are read as text. The parsers understand what these files use
(instructions with line continuations, JSON-form ENTRYPOINT, ``KEY=VALUE`` pairs; Apptainer header and
``%sections``; reStructuredText code blocks), nothing more.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Dockerfile:
    """Instructions in order, as ``(INSTRUCTION, arguments)`` with continuation lines joined."""

    instructions: list[tuple[str, str]]
    args: dict[str, str] = field(default_factory=dict)

    def all(self, name: str) -> list[str]:
        return [value for instruction, value in self.instructions if instruction == name]

    def pairs(self, name: str) -> dict[str, str]:
        """``KEY=VALUE`` pairs of every ENV or LABEL instruction (later ones win)."""
        result = {}
        for value in self.all(name):
            for token in shlex.split(value):
                key, _, item = token.partition("=")
                result[key] = item
        return result

    def resolve(self, value: str) -> str:
        """``${ARG}`` / ``$ARG`` replaced by the ARG's default (what a build without --build-arg uses)."""
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.args.get(m.group(1), m.group(0)), value)

    @property
    def entrypoint(self) -> list[str]:
        (value,) = self.all("ENTRYPOINT")
        return json.loads(value)


def parse_dockerfile(text: str) -> Dockerfile:
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue  # comment lines inside a continued instruction
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        name, _, value = current.strip().partition(" ")
        instructions.append((name.upper(), " ".join(value.split())))
        current = ""
    dockerfile = Dockerfile(instructions)
    for value in dockerfile.all("ARG"):
        key, _, default = value.partition("=")
        dockerfile.args[key] = default
    return dockerfile


@dataclass
class DefinitionFile:
    """Header keywords (``Bootstrap``, ``From``) and ``%section`` bodies of an Apptainer definition."""

    header: dict[str, str]
    sections: dict[str, list[str]]

    def lines(self, section: str) -> list[str]:
        """Non-empty, non-comment lines of a section, stripped."""
        return [
            line.strip()
            for line in self.sections.get(section, [])
            if line.strip() and not line.strip().startswith("#")
        ]


def parse_definition(text: str) -> DefinitionFile:
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"^%(\w+)\s*$", line)
        if match:
            current = match.group(1)
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        elif line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
    return DefinitionFile(header, sections)


def rst_code_blocks(text: str) -> list[tuple[str | None, str, str]]:
    """``(label, language, code)`` of every ``.. code-block::``; ``label`` is the text of a comment
    ``.. <name>: <label>`` or ``.. <name> (...)`` right before the block, else ``None``."""
    blocks = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)\.\. code-block::\s*(\S+)", line)
        if not match:
            continue
        indent = len(match.group(1))
        body = []
        for following in lines[index + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        code_indent = min(len(b) - len(b.lstrip()) for b in body if b.strip())
        code = "\n".join(b[code_indent:] for b in body).strip("\n") + "\n"
        label = None
        previous = [p for p in lines[:index] if p.strip()]
        if previous:
            comment = re.match(r"^\.\. ([\w-]+)(?::\s*(\S+)|\s*\(.*\))\s*$", previous[-1])
            if comment and "::" not in previous[-1]:
                label = comment.group(2) or comment.group(1)
        blocks.append((label, match.group(2), code))
    return blocks


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


@pytest.fixture(scope="session")
def definition() -> DefinitionFile:
    return parse_definition((REPO / "singularity.def").read_text())


@pytest.fixture(scope="session")
def hpc_blocks() -> list[tuple[str | None, str, str]]:
    return rst_code_blocks((REPO / "docs" / "hpc.rst").read_text())
