"""The README's snippets run as written, and its demo table is the documented command's output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    body = re.search(rf"<!-- section:{section} -->(.*?)<!-- /section:{section} -->", text, re.S)
    assert body, f"README has no {section} section"
    return re.findall(r"```python\n(.*?)```", body.group(1), re.S)


@pytest.mark.parametrize("section", ["quickstart", "schedulers", "likelihood", "latent"])
def test_readme_snippets_run(section):
    blocks = python_blocks(section)
    assert blocks
    for block in blocks:
        exec(compile(block, f"README:{section}", "exec"), {})


def test_readme_demo_table_is_what_the_documented_command_prints():
    """The demo numbers are generated from docs/demo-metrics.json, never copied by hand."""
    text = README.read_text()
    block = re.search(r"<!-- demo-table: (python -m \S+) (\S+) -->\n(.*?)\n<!-- /demo-table -->", text, re.S)
    assert block, "README has no generated demo-table block"
    module, metrics_json = block.group(1).split()[-1], REPO / block.group(2)
    assert module == "scratch_diffusion.demo.readme_table" and metrics_json.is_file()
    printed = subprocess.run(
        [sys.executable, "-m", module, str(metrics_json)], capture_output=True, text=True, check=True
    ).stdout
    assert block.group(3).strip() == printed.strip()
