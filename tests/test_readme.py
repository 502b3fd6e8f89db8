"""The README is executable documentation: its commands and its code must stay true."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def test_readme_opens_with_two_set_up_commands_and_ci_runs_the_test_one():
    readme = read("README.md")
    setup = readme.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S)
    assert len(commands) == 2, commands
    assert commands[0].startswith("pip install -e . && ")
    assert commands[1].startswith("pip install -e '.[test]' && ")
    ci_lines = [line for line in read(".ci/run").splitlines() if line and not line.startswith("#")]
    assert commands[1] in ci_lines


def test_readme_python_snippets_run():
    readme = read("README.md")
    checked = 0
    for snippet in re.findall(r"```python\n(.*?)\n```", readme, flags=re.S):
        result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert result.returncode == 0, result.stderr
        # a `print(...)  # output` line documents what it prints: the comments must be the output
        documented = [line.split("  # ", 1)[1].strip() for line in snippet.splitlines() if line.startswith("print(") and "  # " in line]
        if documented:
            assert result.stdout.strip().splitlines()[-len(documented):] == documented
        checked += len(documented)
    assert checked >= 2  # the estimator example documents its two printed lines
