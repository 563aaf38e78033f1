"""Snakemake's own checks of the workflow: ``snakemake --lint`` finds nothing but the one lint that
cannot apply here, and the Snakefiles are formatted as ``snakefmt`` formats them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.workflow_run import ROOT, snakemake

# Every rule runs in the one pinned environment `make install` builds (llama.cpp is built by the
# toolchain rule, not taken from a package), so a per-rule conda environment or container would be
# a second, unpinned copy of it: this lint cannot apply, and only this one is let through.
NOT_APPLICABLE = {"Specify a conda environment or container for each rule."}
SNAKEFILES = [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]


def lints(text: str) -> list[tuple[str, str]]:
    """(where, lint title) for each lint in ``snakemake --lint``'s text output."""
    found, where = [], None
    for line in text.splitlines():
        if header := re.match(r"^Lints for (.+):$", line):
            where = header.group(1)
        elif item := re.match(r"^    \* (.+?):?$", line):
            found.append((where, item.group(1)))
    return found


def test_lint_reads_snakemakes_report():
    report = ("Lints for rule quantize (line 6, rules/quantize.smk):\n"
              "    * Specify a conda environment or container for each rule.:\n"
              "      This way, the used software for each specific step is documented.\n"
              "Lints for snakefile rules/common.smk:\n"
              "    * Environment variable PATH used but not asserted with envvars directive in line 22.:\n")
    assert lints(report) == [
        ("rule quantize (line 6, rules/quantize.smk)", "Specify a conda environment or container for each rule."),
        ("snakefile rules/common.smk", "Environment variable PATH used but not asserted with envvars directive in line 22.")]


def test_snakemake_lint_finds_nothing_that_applies(tmp_path):
    proc = snakemake(tmp_path, None, "--lint", check=False)
    found = lints(proc.stdout + proc.stderr)
    rules = {re.match(r"rule (\w+)", where).group(1) for where, _ in found if where.startswith("rule ")}
    assert len(rules) >= 20  # every rule was linted (and the report was read)
    assert [(where, title) for where, title in found if title not in NOT_APPLICABLE] == []


def test_snakefiles_are_formatted_as_snakefmt_formats_them():
    snakefmt = Path(sys.executable).with_name("snakefmt")
    proc = subprocess.run([str(snakefmt), "--check", "--diff", *map(str, SNAKEFILES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
