"""Regenerate (or check) every generated block of the documentation: results tables and CLI references.

    python docs/generate.py            # rewrite every stale block of docs/**/*.md and README.md
    python docs/generate.py --check    # change nothing; exit 1 naming each stale block, with a diff

A generated block is the output of the command its opening marker names, between the markers::

    <!-- generated: python benchmarks/bench_few_step.py --table -->

    …exactly what the command prints…

    <!-- /generated -->

A command is ``python SCRIPT ARGS…`` or ``python -m MODULE ARGS…``, run from the repository root. Commands run in
this process (``runpy``; the script's folder first on ``sys.path``, as ``python SCRIPT`` has it), which imports
torch and diffusers once for all blocks; a command that fails (a missing results file, say) stops the run with
its message. ``tests/docs/test_generated_blocks.py`` checks every block against its command.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import os
import re
import runpy
import shlex
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
BLOCK = re.compile(r"<!-- generated: (?P<command>.+?) -->\n(?P<body>.*?)<!-- /generated -->", re.S)


class CommandError(RuntimeError):
    """A block's command is malformed or failed."""


@dataclass(frozen=True)
class Block:
    """One generated block of a page."""

    page: Path
    command: str
    body: str  # the text between the markers, as written on the page
    line: int  # the opening marker's line number (1-based)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO) if self.page.is_relative_to(REPO) else self.page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The generated blocks of one page, in order."""
    text = page.read_text(encoding="utf-8")
    return [
        Block(page, match.group("command").strip(), match.group("body"), text.count("\n", 0, match.start()) + 1)
        for match in BLOCK.finditer(text)
    ]


def pages() -> list[Path]:
    """Every page with generated blocks: the site's Markdown pages and the README."""
    return [*sorted(DOCS.rglob("*.md")), REPO / "README.md"]


def block_text(output: str) -> str:
    """The text between the markers for a command's ``output``: one blank line each side, as Markdown needs."""
    return f"\n{output.strip()}\n\n"


@contextlib.contextmanager
def command_context(argv: list[str], script_dir: Path | None) -> Iterator[io.StringIO]:
    """``sys.argv``, ``sys.path``, the working directory and stdout as ``python …`` would give the command."""
    saved_argv, saved_path, saved_cwd = sys.argv[:], sys.path[:], os.getcwd()
    sys.argv = argv
    if script_dir is not None:
        sys.path.insert(0, str(script_dir))
    os.chdir(REPO)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            yield out
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        os.chdir(saved_cwd)


def run_command(command: str) -> str:
    """What ``command`` prints to stdout, run in this process from the repository root.

    Raises:
        CommandError: the command is not ``python SCRIPT …`` / ``python -m MODULE …``, or it exits non-zero.
    """
    words = shlex.split(command)
    if len(words) < 2 or words[0] != "python":
        raise CommandError(f"{command!r}: a generated block's command is 'python SCRIPT …' or 'python -m MODULE …'")
    try:
        if words[1] == "-m":
            if len(words) < 3:
                raise CommandError(f"{command!r}: 'python -m' needs a module")
            with command_context([words[2], *words[3:]], None) as out:
                runpy.run_module(words[2], run_name="__main__", alter_sys=True)
        else:
            script = REPO / words[1]
            if not script.is_file():
                raise CommandError(f"{command!r}: no script {script}")
            with command_context([str(script), *words[2:]], script.parent) as out:
                runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            raise CommandError(f"{command!r} failed: {exit_.code}") from None
    return out.getvalue()


@dataclass(frozen=True)
class Outcome:
    """A block and what its command gave: the text it should have, or the command's error."""

    block: Block
    expected: str | None
    error: str | None = None

    @property
    def stale(self) -> bool:
        return self.error is None and self.block.body != self.expected


def outcomes(page: Path) -> list[Outcome]:
    """Each block of ``page`` with its command's output (or error); every command runs, even after a failure."""
    results = []
    for block in blocks(page):
        try:
            results.append(Outcome(block, block_text(run_command(block.command))))
        except CommandError as error:
            results.append(Outcome(block, None, str(error)))
    return results


def regenerate(page: Path, results: Sequence[Outcome]) -> int:
    """Rewrite the stale blocks of ``page`` (from ``results``); returns how many were rewritten."""
    fresh = {outcome.block.line: outcome.expected for outcome in results if outcome.stale}
    if not fresh:
        return 0
    text = page.read_text(encoding="utf-8")

    def replace(match: re.Match[str]) -> str:
        line = text.count("\n", 0, match.start()) + 1
        body = fresh.get(line, match.group("body"))
        return f"<!-- generated: {match.group('command').strip()} -->\n{body}<!-- /generated -->"

    page.write_text(BLOCK.sub(replace, text), encoding="utf-8")
    return len(fresh)


def diff(outcome: Outcome) -> str:
    page, printed = outcome.block.body.splitlines(), (outcome.expected or "").splitlines()
    return "\n".join(difflib.unified_diff(page, printed, "on the page", "printed", lineterm="", n=1))


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 every block is (now) current; 1 ``--check`` found stale blocks; 2 a command failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", type=Path, help="pages to process (default: docs/**/*.md and README.md)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    args = parser.parse_args(argv)
    stale = failed = 0
    for page in [page.resolve() for page in args.pages] or pages():
        results = outcomes(page)
        for outcome in results:
            if outcome.error is not None:
                failed += 1
                print(f"{outcome.block.where}: error: {outcome.error}", file=sys.stderr)
            elif outcome.stale and args.check:
                stale += 1
                print(f"{outcome.block.where}: stale block of `{outcome.block.command}`\n{diff(outcome)}\n")
        if not args.check and (count := regenerate(page, results)):
            print(f"{outcome.block.where.rsplit(':', 1)[0]}: {count} block(s) rewritten")
    if stale:
        print(f"{stale} stale block(s): run `python docs/generate.py`")
    return 2 if failed else 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
