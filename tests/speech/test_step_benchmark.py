"""``benchmarks/speech_step.py``: the table's rows, timed in processes of their own or in one."""

from __future__ import annotations

import pytest

from tests.conftest import load_script

TINY = ["--batch", "2", "--steps", "6", "--labels", "2", "--phones", "5", "--posteriors", "lattice",
        "--estimators", "vimco-seq,reinforce", "--samples", "1,2", "--repeats", "1", "--warmup", "1"]


@pytest.mark.parametrize("isolation,rounds", [("none", 2), ("process", 1)])  # a child process per row and round
def test_step_table_has_every_row_and_ratios_within_rounds(tmp_path, isolation, rounds):
    step = load_script("benchmarks/speech_step.py")
    out = tmp_path / "step.md"
    step.main([*TINY, "--isolation", isolation, "--rounds", str(rounds), "--out", str(out)])
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    # CTC, then vimco-seq at K = 2 only (VIMCO needs K >= 2), reinforce at K = 1 and 2
    assert [(r[0].strip(), r[2].strip(), r[3].strip()) for r in rows] == [
        ("ctc", "-", "1"), ("hard-alignment", "vimco-seq", "2"), ("hard-alignment", "reinforce", "1"), ("hard-alignment", "reinforce", "2")]
    assert rows[0][5].strip() == "1.00" and rows[0][6].strip() == "1.00-1.00"
    for row in rows:
        low, high = (float(v) for v in row[6].split("-"))
        assert float(row[4]) > 0 and low <= float(row[5]) <= high
    assert ("process of its own" in out.read_text()) == (isolation == "process")
