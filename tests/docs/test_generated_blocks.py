"""Every generated block of the site is exactly what its command prints; the generator finds, checks and rewrites.

The blocks (`<!-- generated: COMMAND -->` … `<!-- /generated -->`) are the results tables of the Benchmarks page and
the CLI reference. Their commands read recorded results or argparse parsers, never measure, so running them here is
cheap; `python docs/generate.py` is the one command that rewrites them all.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from .helpers import DOCS, REPO, docs_module, pages

generate = docs_module("generate.py")
ALL_BLOCKS = [block for page in pages() for block in generate.blocks(page)]
TABLE_RULE = re.compile(r"^\|[-:|]+\|$", re.M)
PROVENANCE = re.compile(r"^(Recorded in|From) `(?P<file>[^`]+\.json)`", re.M)


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda block: f"{block.where}: {block.command}")
def test_block_is_what_its_command_prints(block) -> None:
    printed = generate.block_text(generate.run_command(block.command))
    assert block.body == printed, f"stale block at {block.where}: run `python docs/generate.py`"


def test_every_table_on_the_benchmarks_page_says_where_its_numbers_come_from() -> None:
    """A table's block prints its provenance line, or the block right after it is one (for a file's own printer)."""
    blocks = generate.blocks(DOCS / "benchmarks.md")
    for index, block in enumerate(blocks):
        if not TABLE_RULE.search(block.body):
            continue
        following = blocks[index + 1].body if index + 1 < len(blocks) else ""
        beside = PROVENANCE.search(following) and not TABLE_RULE.search(following)
        assert PROVENANCE.search(block.body) or beside, f"{block.where}: a table with no provenance line beside it"


def test_every_results_file_is_on_the_benchmarks_page() -> None:
    bodies = [block.body for block in generate.blocks(DOCS / "benchmarks.md")]
    shown = {match["file"] for body in bodies for match in PROVENANCE.finditer(body)}
    recorded = {str(path.relative_to(REPO)) for path in (REPO / "benchmarks" / "results").glob("*.json")}
    recorded |= {str(path.relative_to(REPO)) for path in DOCS.glob("*-metrics.json")}
    assert recorded <= shown, f"results files with no table on the Benchmarks page: {sorted(recorded - shown)}"


def test_every_command_line_parser_is_on_the_cli_reference() -> None:
    """Each ``build_parser`` of the installed packages has a generated block on docs/cli.md."""
    folders = {"scratch_diffusion": "scratch_diffusion", "pipelines": "scratch_diffusion.pipelines",
               "training": "scratch_diffusion.training"}  # fmt: skip
    expected = set()
    for folder, package in folders.items():
        for path in (REPO / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            if any(isinstance(node, ast.FunctionDef) and node.name == "build_parser" for node in tree.body):
                module = ".".join([package, *path.relative_to(REPO / folder).with_suffix("").parts])
                expected.add(f"python docs/cli_reference.py {module.removesuffix('.__init__')}:build_parser")
    documented = {block.command for block in generate.blocks(DOCS / "cli.md")}
    assert expected and expected <= documented, f"parsers missing from docs/cli.md: {sorted(expected - documented)}"


# --- the generator itself, on a page and a script of its own -------------------------------------------------------


@pytest.fixture
def page_and_script(tmp_path: Path) -> tuple[Path, Path]:
    script = tmp_path / "table.py"
    script.write_text("import sys\nprint('| a | b |\\n|---|---|\\n| 1 | ' + ' '.join(sys.argv[1:]) + ' |')\n")
    page = tmp_path / "page.md"
    page.write_text(
        f"# Page\n\nBefore.\n\n<!-- generated: python {script} two words -->\n\n| stale |\n\n<!-- /generated -->\n\n"
        "After.\n",
        encoding="utf-8",
    )
    return page, script


def test_check_reports_a_stale_block_then_regenerating_fixes_it(page_and_script, capsys) -> None:
    page, _ = page_and_script
    assert generate.main(["--check", str(page)]) == 1
    assert "stale block" in capsys.readouterr().out
    before = page.read_text(encoding="utf-8")
    assert generate.main([str(page)]) == 0
    after = page.read_text(encoding="utf-8")
    assert "| 1 | two words |" in after and "| stale |" not in after
    assert after.startswith("# Page\n\nBefore.\n\n") and after.endswith("<!-- /generated -->\n\nAfter.\n")
    assert before != after and generate.main(["--check", str(page)]) == 0


def test_a_failing_command_is_an_error_naming_it(page_and_script, capsys) -> None:
    page, script = page_and_script
    script.write_text("raise SystemExit('benchmarks/results/x.json: no recorded results')\n")
    assert generate.main(["--check", str(page)]) == 2
    assert "no recorded results" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["ls -l", "python", "python -m", "python no/such/script.py"])
def test_only_python_commands_run(command: str) -> None:
    with pytest.raises(generate.CommandError):
        generate.run_command(command)
