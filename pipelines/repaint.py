"""RePaint's resampling schedule (Lugmayr et al., 2022, Alg. 1) as moves between steps, and its cost.

Counted in steps still to run, s (s = S at the start of a run of S steps, 0 at its end), RePaint jumps back at
s ∈ {0, j, 2j, …} with s < S − j (diffusers' ``RePaintScheduler``: jump length j = ``jump_length``): having
arrived at s, it noises the sample back up j steps and descends them again, r − 1 times (r = ``jump_n_sample``;
r = 1 is plain replacement). The moves here are in steps taken, m = S − s, so the jump points are m = S − s and
each jumps back to m − j ≥ 1 (never to the run's start). A descent of steps [m, m') costs the model evaluations
of its timestep entries (:class:`~.edit_levels.StepLayout`): one per step for first-order schedulers, two per
step (predictor and corrector) for second-order ones, whose last step to the end is a single Euler entry.

Model evaluations of one run of S steps, with J = |{0, j, 2j, …} ∩ [0, S − j)| jump points and order k:

    E(S, j, r, k) = k·S − (k − 1) + (r − 1)·(k·j·J − (k − 1)·[J > 0])          (E = 0 for S = 0)

— the descent, plus r − 1 re-descents of j steps per jump point, the one from the end (s = 0) ending in the
single-entry last step. First order: S + (r − 1)·j·J; diffusers' defaults S = 250, j = 10, r = 10 give 2,410.
"""

from __future__ import annotations

from .edit_levels import StepLayout


def repaint_jump_points(num_steps: int, jump_length: int) -> list[int]:
    """Steps taken (ascending) after which RePaint jumps back ``jump_length`` steps: S − s for s ∈ {0, j, …} < S − j."""
    return sorted(num_steps - s for s in range(0, num_steps - jump_length, jump_length))


def repaint_moves(num_steps: int, jump_length: int, jump_n_sample: int) -> list[tuple[int, int]]:
    """The run as moves (from, to) between steps taken 0 … S: a descent if to > from, else a jump back up.

    Descents are split at every jump target, so each resampled segment starts where a descent starts.
    """
    points = repaint_jump_points(num_steps, jump_length) if jump_n_sample > 1 else []
    moves, position = [], 0
    for point in points:
        target = point - jump_length
        if target > position:
            moves.append((position, target))
        moves.append((target, point))
        moves.extend([(point, target), (target, point)] * (jump_n_sample - 1))
        position = point
    if position < num_steps:
        moves.append((position, num_steps))
    return moves


def repaint_evaluations(num_steps: int, jump_length: int = 10, jump_n_sample: int = 1, order: int = 1) -> int:
    """Model evaluations of a RePaint run of ``num_steps`` steps: E(S, j, r, k) of the module docstring.

    ``order`` is the scheduler's (2 for Heun-type schedulers). Under classifier-free guidance each evaluation is
    two UNet halves in ``pipe.evaluations``.
    """
    if num_steps == 0:
        return 0
    jumps = len(range(0, num_steps - jump_length, jump_length)) if jump_n_sample > 1 else 0
    descent = order * num_steps - (order - 1)
    resampled = order * jump_length * jumps - (order - 1) * (jumps > 0)
    return descent + (jump_n_sample - 1) * resampled


def entry_moves(layout: StepLayout, start_step: int, moves: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``moves`` (steps taken since ``start_step``) as timestep entries (from, to) of ``layout``.

    Raises ``ValueError`` before any work where a move starts or ends inside a schedule of irregular layout.
    """
    return [(layout.boundary(start_step + source), layout.boundary(start_step + target)) for source, target in moves]


def descent_entries(moves: list[tuple[int, int]]) -> int:
    """Model evaluations of entry ``moves``: the entries of every descent."""
    return sum(target - source for source, target in moves if target > source)
