"""Every ```python block of every page runs, in order, in one namespace per page, in a fresh temporary folder.

A block right after a line ``<!-- docs-test: skip — REASON -->`` is not run; the reason must be given (what the block
needs that a test machine lacks: the Hub, a trained model) and the marker must stand right before a python block.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .helpers import DOCS, pages, python_snippets

PAGES_WITH_SNIPPETS = [page for page in pages() if python_snippets(page)]


@pytest.mark.parametrize("page", PAGES_WITH_SNIPPETS, ids=lambda page: str(page.relative_to(DOCS)))
def test_page_snippets_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_snippets_{page.stem}"}
    ran = 0
    for snippet in python_snippets(page):
        if snippet.skip_reason is not None:
            continue
        exec(compile(snippet.code, f"{page.relative_to(DOCS)}:{snippet.line}", "exec"), namespace)
        ran += 1
    assert ran or all(snippet.skip_reason for snippet in python_snippets(page))


def test_every_skip_says_why_and_precedes_a_python_block() -> None:
    problems = []
    for page in pages():
        lines = page.read_text(encoding="utf-8").splitlines()
        skipped_lines = set()
        for snippet in python_snippets(page):
            if snippet.skip_reason is not None:
                if len(snippet.skip_reason.strip()) < 10:
                    problems.append(f"{page.name}:{snippet.line}: skip without a reason: {snippet.skip_reason!r}")
                skipped_lines.add(snippet.line)
        for number, line in enumerate(lines, start=1):
            if line.lstrip().startswith("<!-- docs-test"):
                following = next((n for n in range(number + 1, len(lines) + 1) if lines[n - 1].strip()), None)
                if following not in skipped_lines:
                    problems.append(f"{page.name}:{number}: a docs-test marker not right before a ```python block")
    assert not problems, "\n".join(problems)


def test_snippet_parser_finds_blocks_and_skips(tmp_path: Path) -> None:
    """The parser the two tests above rely on: indented fences, skip markers, other languages ignored."""
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n```python\na = 1\n```\n\n```bash\nls\n```\n\n<!-- docs-test: skip — needs the Hub -->\n"
        "```python\nb = 2\n```\n\n1. a list item\n\n    ```python\n    c = a + 1\n    ```\n",
        encoding="utf-8",
    )
    snippets = python_snippets(page)
    assert [s.code for s in snippets] == ["a = 1\n", "b = 2\n", "c = a + 1\n"]
    assert [s.skip_reason for s in snippets] == [None, "needs the Hub", None]
    assert re.fullmatch(r"\d+", str(snippets[1].line))
