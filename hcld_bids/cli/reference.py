"""The command-line reference of the README, generated from the parser so that the two never disagree.

``python -m hcld_bids.cli.reference`` prints the reStructuredText that README.rst holds between the
``.. begin-cli-reference`` and ``.. end-cli-reference`` comments; a test compares them.
"""

from __future__ import annotations

import argparse

from .parser import build_parser


def _option_line(action: argparse.Action) -> str:
    if isinstance(action, argparse.BooleanOptionalAction):
        return ", ".join(f"``{opt}``" for opt in action.option_strings)
    if action.nargs == 0:
        return ", ".join(f"``{opt}``" for opt in action.option_strings)
    metavar = action.metavar or action.dest.upper()
    suffix = f" {metavar} [{metavar} ...]" if action.nargs == "+" else f" {metavar}"
    return ", ".join(f"``{opt}{suffix}``" for opt in action.option_strings)


def _description(action: argparse.Action) -> str:
    text = (action.help or "").replace("%(default)s", str(action.default))
    shown_default = action.default is not None and action.default is not False and action.default != argparse.SUPPRESS and not isinstance(
        action, (argparse._CountAction, argparse._VersionAction, argparse._HelpAction)
    )
    if shown_default and "default" not in text:
        default = action.default
        text += f" (default: ``{default}``)"
    return text


def cli_reference_rst(parser: argparse.ArgumentParser | None = None) -> str:
    """reStructuredText listing the positional arguments and every option group of ``parser``."""
    parser = parser or build_parser()
    lines: list[str] = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS]
        if not actions:
            continue
        title = "Arguments" if group.title == "positional arguments" else (
            "General options" if group.title in ("options", "optional arguments") else group.title
        )
        lines += [title, "~" * len(title), ""]
        for action in actions:
            head = f"``{action.metavar}``" if not action.option_strings else _option_line(action)
            lines += [head, f"    {_description(action)}", ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover - documentation helper
    print(cli_reference_rst(), end="")
