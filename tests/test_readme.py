"""The README's scheduler snippets run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    body = re.search(rf"<!-- section:{section} -->(.*?)<!-- /section:{section} -->", text, re.S)
    assert body, f"README has no {section} section"
    return re.findall(r"```python\n(.*?)```", body.group(1), re.S)


@pytest.mark.parametrize("section", ["quickstart", "schedulers"])
def test_readme_snippets_run(section):
    blocks = python_blocks(section)
    assert blocks
    for block in blocks:
        exec(compile(block, f"README:{section}", "exec"), {})
