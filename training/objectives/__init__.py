"""The training objectives of ``train.py``, by name: one module per objective, registered here.

A new objective is one module (a subclass of :class:`~.base.Objective`: its arguments, checks, loss, card
text and sampling scheduler; ``flow.py`` is the model) and one :func:`register` line below. Everything
that depends on ``--objective`` goes through :func:`objective_class`:

* the command line: :func:`add_objective_arguments` (``--objective`` and one argument group per objective),
  :func:`choose_objective` (an unset ``--objective``: the first registered objective one of whose
  ``implied_by`` arguments is given, else :data:`DEFAULT_OBJECTIVE`) and :func:`validate_objective_args`;
* the trainer: :func:`make_objective` (its loss, its training and sampling schedulers);
* the model card (:meth:`~.base.Objective.describe`, ``tag``, :func:`unused_objective_arguments`) and the
  evaluation's few-step sampler (:meth:`~.base.Objective.few_step_scheduler`).

An argument belongs to one objective; one that several objectives read (``--ddpm_num_steps``) is ``cli.py``'s.
"""

from __future__ import annotations

import argparse
import math

from ..errors import ConfigError
from ..errors import check as _check
from .base import Objective
from .consistency import ConsistencyObjective
from .ddpm import DDPMObjective
from .flow import FlowMatchingObjective
from .meanflow import MeanFlowObjective

OBJECTIVES: dict[str, type[Objective]] = {}
DEFAULT_OBJECTIVE = "flow"
# why the default is the default (the --objective help)
DEFAULT_REASON = (
    "with logit-normal σ — the best measured short-run recipe (docs/benchmarks.md, 'Objectives at equal steps')"
)


def register(objective: type[Objective]) -> type[Objective]:
    """Make ``objective`` available as ``--objective <objective.name>`` (usable as a class decorator)."""
    OBJECTIVES[objective.name] = objective
    return objective


register(DDPMObjective)
register(FlowMatchingObjective)
register(MeanFlowObjective)  # one to four steps (issue 23)
register(ConsistencyObjective)


def objective_class(name: str) -> type[Objective]:
    """The registered objective called ``name``; ``ValueError`` naming the registered ones otherwise."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective {name!r} is not registered; registered: {', '.join(OBJECTIVES)}.")
    return OBJECTIVES[name]


def make_objective(args: argparse.Namespace) -> Objective:
    """The objective of the (validated) command line, with its training noise scheduler."""
    return objective_class(args.objective).from_args(args)


def own_arguments(objective: type[Objective]) -> dict[str, object]:
    """The arguments ``objective`` adds (their ``dest``), with their parser defaults."""
    parser = argparse.ArgumentParser(add_help=False)
    objective.add_arguments(parser.add_argument_group(objective.title))
    return vars(parser.parse_args([]))


def add_objective_arguments(parser: argparse.ArgumentParser, group: argparse._ArgumentGroup) -> None:
    """``--objective`` (in ``group``) and, after it in ``parser``, one argument group per registered objective."""
    implied = [
        f"{name} if a {name}-only argument is given ({', '.join('--' + a for a in cls.implied_by)})"
        for name, cls in OBJECTIVES.items()
        if cls.implied_by
    ]
    group.add_argument(
        "--objective",
        choices=tuple(OBJECTIVES),
        help=f"training objective; unset: {', '.join([*implied, f'else {DEFAULT_OBJECTIVE} {DEFAULT_REASON}'])}",
    )
    for cls in OBJECTIVES.values():
        cls.add_arguments(parser.add_argument_group(cls.title))


def _given(args: argparse.Namespace, name: str, default: object) -> bool:
    value = getattr(args, name)
    return value is not None and value is not False and value != default


def choose_objective(args: argparse.Namespace) -> None:
    """Resolve an unset ``--objective`` (see the module docstring) and fill the chosen one's defaults."""
    if args.objective is None:
        args.objective = next(
            (name for name, cls in OBJECTIVES.items() if any(_given(args, a, None) for a in cls.implied_by)),
            DEFAULT_OBJECTIVE,
        )
    objective_class(args.objective).fill_defaults(args)


def validate_objective_args(args: argparse.Namespace) -> None:
    """Every objective's float arguments are finite; no other objective's argument is given; the objective's checks."""
    chosen = objective_class(args.objective)
    for cls in OBJECTIVES.values():
        for name in cls.float_arguments:
            value = getattr(args, name)
            _check(value is None or math.isfinite(value), f"--{name} {value} is not allowed; pass a finite number.")
    mine = own_arguments(chosen)
    for name, cls in OBJECTIVES.items():
        if cls is chosen:
            continue
        for argument, default in own_arguments(cls).items():
            if argument not in mine and _given(args, argument, default):
                hint = chosen.foreign_hints.get(argument)
                raise ConfigError(
                    f"--{argument} applies to --objective {name}; {hint}."
                    if hint
                    else f"--{argument} applies to --objective {name} only."
                )
    chosen.validate(args)


def unused_objective_arguments(args: argparse.Namespace) -> set[str]:
    """The objective arguments that did not apply to this run: the other objectives', and the chosen one's unused."""
    chosen = objective_class(args.objective)
    others = {a for cls in OBJECTIVES.values() if cls is not chosen for a in own_arguments(cls)}
    return (others - set(own_arguments(chosen))) | chosen.unused_arguments(args)


__all__ = [
    "DEFAULT_OBJECTIVE",
    "OBJECTIVES",
    "ConsistencyObjective",
    "DDPMObjective",
    "FlowMatchingObjective",
    "MeanFlowObjective",
    "Objective",
    "add_objective_arguments",
    "choose_objective",
    "make_objective",
    "objective_class",
    "register",
    "unused_objective_arguments",
    "validate_objective_args",
]
