"""A command line's reference in Markdown, generated from its argparse parser (never copied by hand).

    python docs/cli_reference.py scratch_diffusion.training.cli:build_parser

prints the parser's description, then per argument group its title, description and one table row per argument:
the option strings with a value placeholder, the default, and the help text (``%(default)s``-style fields expanded,
choices listed). Sub-commands (``add_subparsers``) get a section each. ``docs/cli.md`` holds one such block per
command line between ``<!-- generated: … -->`` markers; ``python docs/generate.py`` rewrites them.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable, Sequence

OPTION_IN_TEXT = re.compile(r"(?<![\w`-])(--[a-zA-Z][\w-]*)")
NO_VALUE = (
    argparse._StoreTrueAction,
    argparse._StoreFalseAction,
    argparse._StoreConstAction,
    argparse._CountAction,
    argparse.BooleanOptionalAction,
)


def load_parser(spec: str) -> argparse.ArgumentParser:
    """``"package.module:function"`` → the parser that function builds."""
    module_name, _, function_name = spec.partition(":")
    if not function_name:
        raise ValueError(f"{spec!r}: expected 'module:function', e.g. 'scratch_diffusion.demo.cli:build_parser'")
    builder: Callable[[], argparse.ArgumentParser] = getattr(importlib.import_module(module_name), function_name)
    parser = builder()
    if not isinstance(parser, argparse.ArgumentParser):
        raise TypeError(f"{spec} returned {type(parser).__name__}, not an argparse.ArgumentParser")
    return parser


def markdown_text(text: str) -> str:
    """Help text as one Markdown table cell: options in code spans, table and HTML characters escaped."""
    text = " ".join(text.split())
    text = text.replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")
    return OPTION_IN_TEXT.sub(r"`\1`", text)


def placeholder(action: argparse.Action) -> str:
    """What follows the option: ``N`` for an int, ``X`` for a float, ``VALUE`` otherwise, with nargs' repetition."""
    if isinstance(action, NO_VALUE) or action.nargs == 0:
        return ""
    if action.metavar is not None:
        name = action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    else:
        name = {int: "N", float: "X"}.get(action.type, "VALUE")
    if action.nargs == "?":
        return f" [{name}]"
    if action.nargs == "*":
        return f" [{name} …]"
    if action.nargs == "+":
        return f" {name} [{name} …]"
    if isinstance(action.nargs, int):
        return " " + " ".join([name] * action.nargs)
    return f" {name}"


def default_text(action: argparse.Action) -> str:
    """The default as shown in the table: empty for an off switch or an unset value."""
    if isinstance(action, argparse.BooleanOptionalAction):
        return "on" if action.default else "off"
    if isinstance(action, NO_VALUE) or action.default is None or action.default is argparse.SUPPRESS:
        return ""
    if isinstance(action.default, (list, tuple)):
        return "`" + " ".join(str(value) for value in action.default) + "`"
    return f"`{action.default}`"


def help_text(action: argparse.Action, prog: str) -> str:
    """The help string with argparse's ``%(name)s`` fields filled in, then the choices and whether it is required."""
    text = action.help or ""
    if text is argparse.SUPPRESS:
        return ""
    fields = {**vars(action), "prog": prog}
    if action.choices is not None:
        fields["choices"] = ", ".join(str(choice) for choice in action.choices)
    text = text % fields if "%" in text else text
    notes = []
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        notes.append("one of " + ", ".join(f"`{choice}`" for choice in action.choices))
    if action.required and action.option_strings:
        notes.append("**required**")
    cell = markdown_text(text)
    return "; ".join(part for part in (cell, *notes) if part)


def action_row(action: argparse.Action, prog: str) -> str:
    names = ", ".join(f"`{name}{placeholder(action)}`" for name in action.option_strings)
    if not action.option_strings:  # a positional argument
        names = f"`{action.metavar or action.dest}`"
    return f"| {names} | {default_text(action)} | {help_text(action, prog)} |"


def group_markdown(group: argparse._ArgumentGroup, prog: str) -> list[str]:
    """One argument group: its title, its description and its table (empty groups and ``--help`` left out)."""
    hidden = (argparse._HelpAction, argparse._SubParsersAction)
    actions = [a for a in group._group_actions if not isinstance(a, hidden) and a.help != argparse.SUPPRESS]
    if not actions:
        return []
    lines = [f"**{markdown_text(group.title or 'arguments')}**", ""]
    if group.description:
        lines += [markdown_text(group.description), ""]
    lines += ["| argument | default | meaning |", "|---|---|---|"]
    lines += [action_row(action, prog) for action in actions]
    return [*lines, ""]


def parser_markdown(parser: argparse.ArgumentParser) -> str:
    """The whole reference of ``parser``: description, argument groups, then each sub-command's."""
    lines = [f"`{parser.prog}`" + (f": {markdown_text(parser.description)}" if parser.description else ""), ""]
    for group in parser._action_groups:
        lines += group_markdown(group, parser.prog)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                lines += [f"Sub-command **`{name}`**: {markdown_text(helps.get(name) or '')}", ""]
                for group in subparser._action_groups:
                    lines += group_markdown(group, subparser.prog)
    return "\n".join(lines).strip()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parser", help="the function building the parser, 'package.module:function'")
    print(parser_markdown(load_parser(parser.parse_args(argv).parser)))


if __name__ == "__main__":
    sys.exit(main())
