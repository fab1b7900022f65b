"""MkDocs hook: the pages' TeX formulas become MathML at build time, so they render offline with no script.

Pages write ``$...$`` (inline) and ``$$...$$`` (display). ``pymdownx.arithmatex`` in generic mode wraps them as
``<span class="arithmatex">\\(...\\)</span>`` and ``<div class="arithmatex">\\[...\\]</div>``; this hook replaces
each wrapper by the MathML that ``latex2mathml`` makes of it (browsers render MathML Core natively). A formula
``latex2mathml`` cannot parse, or one with a command it does not know (it would print ``\\varepsilonn`` as text),
is logged as a warning naming the page and the formula, which fails a strict build.
"""

from __future__ import annotations

import html
import logging
import re

from latex2mathml.converter import convert

LOG = logging.getLogger("mkdocs.hooks.mathml")
# arithmatex's generic output; the TeX inside is HTML-escaped (&amp; &lt; &gt;).
INLINE = re.compile(r'<span class="arithmatex">\\\((?P<tex>.*?)\\\)</span>', re.S)
DISPLAY = re.compile(r'<div class="arithmatex">\s*\\\[(?P<tex>.*?)\\\]\s*</div>', re.S)
UNKNOWN_COMMAND = re.compile(r">(\\[A-Za-z]+)<")  # latex2mathml passes a command it does not know through as text


class UnknownCommandError(ValueError):
    """A formula uses a TeX command latex2mathml does not translate."""


def tex_to_mathml(tex: str, display: bool) -> str:
    """MathML of one formula; ``tex`` as written on the page (not HTML-escaped)."""
    mathml = convert(tex.strip(), display="block" if display else "inline")
    if unknown := UNKNOWN_COMMAND.findall(mathml):
        raise UnknownCommandError(f"unknown command(s) {', '.join(unknown)}")
    # Leave a copy of the TeX for screen readers without MathML and for copy-paste.
    return mathml.replace("<math ", f'<math alttext="{html.escape(tex.strip(), quote=True)}" ', 1)


def render_math(page_html: str, where: str = "the page") -> str:
    """``page_html`` with every arithmatex span and block replaced by MathML; failures are logged."""

    def replace(match: re.Match[str], display: bool) -> str:
        tex = html.unescape(match.group("tex"))
        try:
            mathml = tex_to_mathml(tex, display)
        except Exception as error:  # latex2mathml raises several exception types for bad TeX
            LOG.warning("%s: formula %r could not be converted to MathML: %s", where, tex, error)
            return match.group(0)
        return f'<div class="math-display">{mathml}</div>' if display else mathml

    page_html = DISPLAY.sub(lambda m: replace(m, True), page_html)
    return INLINE.sub(lambda m: replace(m, False), page_html)


def on_page_content(page_html: str, page, config, files) -> str:
    """The MkDocs event: runs on each page's HTML after the Markdown conversion."""
    return render_math(page_html, page.file.src_uri)
