"""Griffe extension: the reStructuredText bits of the project's docstrings, as Markdown for mkdocstrings.

The docstrings are Google style (``Args:``, ``Returns:``) with a little reST inside, which reads well in the
source and in ``help()``; rendered as Markdown it would not. Rewritten in the rendered copy only:

* Sphinx roles ``:func:`name``` / ``:class:`~pkg.Name``` (and ``:mod:``, ``:meth:``, ``:attr:``, ``:data:``,
  ``:exc:``, ``:obj:``) become code spans: ```name``` / ```Name```;
* simple two-column tables (``====  ====`` borders, the notation tables of the module docstrings) become
  bullet lists ``- term — text``, continuation lines joined to their row;
* a paragraph ending in ``::`` (a reST literal block follows, indented: Markdown's code block) ends in ``:``;
* an ``Args:`` entry naming several parameters (``a, b, c: as in …``, possibly over several lines) becomes one
  entry per parameter with the same text, so that each gets its own type and default on the API page.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`~?\.?([^`]+)`")
BORDER = re.compile(r"^( *)(=+)( +)(=+) *$")
LITERAL_MARKER = re.compile(r"(?<=\S)::$", re.M)
NAME_LIST_CONTINUED = re.compile(r"^( +\w+(?:, \w+)*,)\n +(?=\w)", re.M)
ARGS_HEADER = re.compile(r"^( *)(?:Args|Arguments|Parameters|Params):\s*$")
NAME_LIST_ENTRY = re.compile(r"^( +)(\w+(?:, \w+)+):(.*)$")


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def split_name_lists(text: str) -> str:
    """In ``Args:`` sections, ``a, b: text`` (and its continuation lines) → ``a: text`` and ``b: text``."""
    lines, out, i, section_indent = text.split("\n"), [], 0, None
    while i < len(lines):
        line = lines[i]
        if header := ARGS_HEADER.match(line):
            section_indent = len(header.group(1))
        elif line.strip() and section_indent is not None and indent_of(line) <= section_indent:
            section_indent = None
        entry = NAME_LIST_ENTRY.match(line) if section_indent is not None else None
        if not entry:
            out.append(line)
            i += 1
            continue
        end = i + 1
        while end < len(lines) and (not lines[end].strip() or indent_of(lines[end]) > len(entry.group(1))):
            end += 1
        while end > i + 1 and not lines[end - 1].strip():  # trailing blank lines belong to what follows
            end -= 1
        for name in entry.group(2).split(", "):
            out += [f"{entry.group(1)}{name}:{entry.group(3)}", *lines[i + 1 : end]]
        i = end
    return "\n".join(out)


def roles_to_code(text: str) -> str:
    """``:func:`~a.b``` → ```b```; ``:func:`a.b``` → ```a.b```."""

    def code(match: re.Match[str]) -> str:
        target = match.group(1)
        short = match.group(0).split("`", 1)[1].startswith("~")
        return f"``{target.rsplit('.', 1)[-1] if short else target}``"

    return ROLE.sub(code, text)


def tables_to_lists(text: str) -> str:
    """Each two-column reST simple table (no header row) in ``text`` as a Markdown bullet list."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        border = BORDER.match(lines[i])
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == lines[i].strip()), None)
        if not border or end is None:
            out.append(lines[i])
            i += 1
            continue
        indent, split = len(border.group(1)), len(border.group(1) + border.group(2) + border.group(3))
        rows: list[list[str]] = []
        for line in lines[i + 1 : end]:
            term, body = line[indent:split].strip(), line[split:].strip()
            if term or not rows:
                rows.append([term, body])
            else:  # a continuation line: more text for the previous row
                rows[-1][1] = f"{rows[-1][1]} {body}".strip()
        out += [" " * indent + f"- {term} — {body}" if body else " " * indent + f"- {term}" for term, body in rows]
        i = end + 1
    return "\n".join(out)


def to_markdown(docstring: str) -> str:
    """The rendered form of one docstring."""
    text = LITERAL_MARKER.sub(":", tables_to_lists(roles_to_code(docstring)))
    while NAME_LIST_CONTINUED.search(text):
        text = NAME_LIST_CONTINUED.sub(r"\1 ", text)
    return split_name_lists(text)


class RestMarkup(griffe.Extension):
    """Rewrites every docstring of a loaded package (after the other extensions attached their modules)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: object) -> None:
        """Griffe event: ``pkg`` is loaded; rewrite the docstrings of it and everything defined in it."""
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if obj.docstring is not None:
                obj.docstring.value = to_markdown(obj.docstring.value)
            stack += [member for member in obj.members.values() if not member.is_alias]
