"""The ``hardalign`` command line: every area registers, help works, estimators are listed."""

import subprocess
import sys

from hardalign.cli import COMMAND_MODULES, build_parser


def run(*args):
    return subprocess.run([sys.executable, "-m", "hardalign.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_commands():
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for command in ("estimators", "train", "evaluate", "prepare", "decode", "plot"):
        assert command in result.stdout


def test_estimators_command():
    result = run("estimators")
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["reinforce", "nvil", "vimco", "vimco-seq"]
    assert "``" not in result.stdout


def test_every_command_module_registers():
    parser = build_parser()
    assert parser.prog == "hardalign" and len(COMMAND_MODULES) == 5


def test_no_command_prints_help_and_fails():
    result = run()
    assert result.returncode == 2 and "usage: hardalign" in result.stdout
