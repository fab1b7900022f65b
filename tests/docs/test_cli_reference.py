"""docs/cli_reference.py renders an argparse parser as the CLI reference's Markdown, from the parser alone."""

from __future__ import annotations

import argparse

import pytest

from .helpers import docs_module

cli_reference = docs_module("cli_reference.py")


def example_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tool.py", description="Do a thing | twice.")
    parser.add_argument("path", help="input folder")
    group = parser.add_argument_group("model", "What is trained.")
    group.add_argument("--steps", type=int, default=100, help="updates (default %(default)s); see --lr")
    group.add_argument("--lr", type=float, help="learning rate; unset: 1e-3")
    group.add_argument("--kind", choices=("a", "b"), default="a", help="one kind, 70 %% of the time")
    group.add_argument("--sizes", type=int, nargs="+", default=[1, 2], help="sizes")
    group.add_argument("--fast", action="store_true", help="go <fast>")
    group.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="EMA weights")
    group.add_argument("--token", required=True, help="a token")
    group.add_argument("--hidden", help=argparse.SUPPRESS)
    return parser


def test_groups_rows_defaults_and_help() -> None:
    text = cli_reference.parser_markdown(example_parser())
    lines = text.splitlines()
    assert lines[0] == "`tool.py`: Do a thing \\| twice."
    assert "**positional arguments**" in lines and "**model**" in lines and "What is trained." in lines
    assert "| `path` |  | input folder |" in lines
    assert "| `--steps N` | `100` | updates (default 100); see `--lr` |" in lines
    assert "| `--lr X` |  | learning rate; unset: 1e-3 |" in lines
    assert "| `--kind VALUE` | `a` | one kind, 70 % of the time; one of `a`, `b` |" in lines
    assert "| `--sizes N [N …]` | `1 2` | sizes |" in lines
    assert "| `--fast` |  | go &lt;fast> |" in lines
    assert "| `--ema`, `--no-ema` | on | EMA weights |" in lines
    assert "| `--token VALUE` |  | a token; **required** |" in lines
    assert "--hidden" not in text and "--help" not in text


def test_sub_commands_get_a_section_each() -> None:
    parser = argparse.ArgumentParser(prog="hub")
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push", help="upload a folder")
    push.add_argument("--output_dir", required=True, help="the folder")
    text = cli_reference.parser_markdown(parser)
    assert "Sub-command **`push`**: upload a folder" in text
    assert "| `--output_dir VALUE` |  | the folder; **required** |" in text


def test_main_prints_the_reference_of_a_builder(capsys: pytest.CaptureFixture[str]) -> None:
    cli_reference.main(["scratch_diffusion.training.hub:build_parser"])
    assert capsys.readouterr().out.startswith("`python -m scratch_diffusion.training.hub`: ")


@pytest.mark.parametrize("spec", ["scratch_diffusion.training.hub", "scratch_diffusion.training.hub:__doc__"])
def test_a_spec_must_name_a_parser_builder(spec: str) -> None:
    with pytest.raises((ValueError, TypeError)):
        cli_reference.load_parser(spec)
