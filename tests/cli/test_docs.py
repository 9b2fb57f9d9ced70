"""README.rst agrees with the parser and with the CI script."""

import os
import re
from pathlib import Path

from hcld_bids.cli.reference import cli_reference_rst

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.rst").read_text()


def _readme_ci_command(marker: str = ".. ci-command"):
    after_marker = README.split(marker, 1)[1]
    block = after_marker.split(".. code-block:: bash", 1)[1]
    return next(line.strip() for line in block.splitlines() if line.strip())


def test_readme_cli_reference_is_generated_from_the_parser():
    block = README.split(".. begin-cli-reference\n", 1)[1].split(".. end-cli-reference", 1)[0]
    assert block.strip() == cli_reference_rst().strip(), (
        "README.rst is out of date: paste the output of `python -m hcld_bids.cli.reference` between the "
        "begin/end-cli-reference markers"
    )


def test_readme_documents_every_option():
    for option in re.findall(r"``(--[a-z-]+)", cli_reference_rst()):
        assert option in README


def test_ci_runs_exactly_the_readme_install_and_test_command():
    script = (REPO / ".ci" / "run").read_text()
    commands = [line for line in script.splitlines() if line.strip() and not line.startswith("#")]
    assert commands[0] == "set -euo pipefail"
    assert "export CI=true" in commands and "exec </dev/null" in commands
    assert commands[-1] == _readme_ci_command()
    assert commands[-2] == _readme_ci_command(".. demo-command")
    assert "hcld-bids-demo" in commands[-2]
    assert "python -m pytest" in commands[-1] and "pip install '.[test]'" in commands[-1]
    assert os.access(REPO / ".ci" / "run", os.X_OK)


def test_readme_lists_every_exit_code_the_app_uses():
    from hcld_bids import errors

    codes = {cls.exit_code for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, errors.HCLDError)} | {0, 1, 130}  # 130: interrupted (Ctrl-C)
    section = README.split("Exit codes\n~~~~~~~~~~", 1)[1].split("\nOutputs\n", 1)[0]
    listed = {int(code) for code in re.findall(r"^(\d+) {2,}\S", section, flags=re.M)}
    assert listed == codes
    import docutils.core  # the table must be valid reStructuredText (it renders on PyPI)

    html = docutils.core.publish_string(section.split("\n\n", 1)[1], writer="html",
                                        settings_overrides={"report_level": 2, "halt_level": 2}).decode()
    assert html.count("<tr>") == len(codes) + 1
