"""Shared by the documentation tests: the repository's paths and the docs' own modules, loaded by file path.

``docs/generate.py``, ``docs/cli_reference.py`` and the hooks in ``docs/hooks/`` are scripts beside the pages, not an
installed package; they are loaded under a ``docs_`` prefix so that their generic names (``generate``) cannot clash.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*$")
SKIP_MARKER = re.compile(r"^\s*<!-- docs-test: skip\s*[—–-]+\s*(?P<reason>.*?)\s*-->\s*$")


def docs_module(relative: str) -> ModuleType:
    """``docs/<relative>`` imported as a module (once per test process)."""
    path = DOCS / relative
    name = "docs_" + path.stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@dataclass(frozen=True)
class Snippet:
    """One ```python block of a page."""

    page: Path
    line: int  # of the opening fence, 1-based
    code: str
    skip_reason: str | None  # the reason of a `<!-- docs-test: skip — … -->` line right before it, if any


def python_snippets(page: Path) -> list[Snippet]:
    """The page's ```python blocks in order (fences indented in a list are dedented)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    snippets, i = [], 0
    while i < len(lines):
        opening = FENCE_OPEN.match(lines[i])
        if not opening:
            i += 1
            continue
        indent = opening.group("indent")
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        code = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end])
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = SKIP_MARKER.match(previous)
        snippets.append(Snippet(page, i + 1, code + "\n", marker.group("reason") if marker else None))
        i = end + 1
    return snippets


def pages() -> list[Path]:
    """Every Markdown page of the site."""
    return sorted(DOCS.rglob("*.md"))
