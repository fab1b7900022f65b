"""The stepping part of :class:`~scratch_schedulers.ScratchDPMSolverScheduler`: where a step starts, the
multistep history, and the update call (README, "Any timestep").

Any timestep: a scheduled timestep starts the usual multistep step; any other t in the path's range
([0, T − 1] on the VP path, [0, T] on the flow path) a first-order step from its exact path point (VP:
the level s = b/a interpolated linearly between training timesteps, as the fractional grids are, so an
integer t is exact; flow: σ = t/T) to the largest scheduled point below it. History entries record the
grid index a step landed on, its start (λ, b, sample), its order and its x̂0; a step uses the latest ones while they
land in one line (at i, then i − 1), so an off-schedule step serves as the next step's history and a jump
in the loop restarts it. One timestep per example (a (B,) CPU tensor): each example keeps its own loop
position and history, examples sharing a start and a history step together, and each steps exactly as
it would alone (lock-step loops at different positions, each with its own order).

Corrector (``corrector="unic_bh1"/"unic_bh2"``): a step whose history is consecutive first corrects its
start sample with UniC (:func:`~scratch_schedulers.samplers.unipc_update`), recomputing the step that led
here from that step's own start, with the model output just evaluated here as one more point; x̂0 is the
one computed from the uncorrected sample (UniPC, ``corrector_reuses="x0"``) or that one shifted towards the
corrected sample (``"epsilon"``, ``"gaussian"``: :func:`~scratch_schedulers.samplers.corrected_prediction_shift`).
The final sample is never corrected (as in UniPC): that would cost one more model evaluation, at σ = 0
where the model adds no information (x̂0 = x there for ε- and v-models), and the UniC weights of a step to
λ = +∞ are infinite. The last step's own accuracy is ``final_step="sigma_squared"``'s job instead.

Algorithm types (:mod:`.samplers.dpm`): ``dpmsolver++`` and ``sde-dpmsolver++`` (η = 1) step in
the data form with the x̂0 history; ``dpmsolver`` and ``sde-dpmsolver`` in the noise form (the same functions with
(a, x0) and (b, ε) swapped) with an ε̂ history, except that every first-order step is taken in the data form
(algebraically the same step, exact at the path's ends); ``sde-dpmsolver`` doubles the ODE step's ε-terms
(:func:`~scratch_schedulers.samplers.dpm_noise_sde_step`). ``step`` draws the noise z once per call for the whole
batch (per-example timesteps: once, indexed by the rows of each group).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .noise_path import signal_noise_at
from .samplers import (
    clean_endpoint_step,
    corrected_prediction_shift,
    dpm_noise_sde_step,
    dpmpp_first_order_step,
    dpmpp_second_order_step,
    dpmpp_third_order_step,
    log_snr,
    unipc_update,
)
from .scheduling_common import check_step_timesteps, is_host


class DPMStart(NamedTuple):
    """Where a step starts: grid index (None off the schedule), path point (a, b, λ), index it lands on, b_next/b."""

    index: int | None
    a: torch.Tensor
    b: torch.Tensor
    lam: torch.Tensor
    target: int
    b_ratio: torch.Tensor


class PastStep(NamedTuple):
    """An earlier step as later ones read it: its start (λ, b, sample), the x̂0 there, its order, and ε̂ there
    (noise-form algorithm types; None otherwise)."""

    lam: torch.Tensor
    b: torch.Tensor
    sample: torch.Tensor
    x0: torch.Tensor
    order: int
    eps: torch.Tensor | None = None


class DPMSolverStepping:
    """Mixin of :class:`~scratch_schedulers.ScratchDPMSolverScheduler`: reads the grid that its ``set_timesteps``
    builds (``_a``, ``_b``, ``_lam``, ``_b_ratio``, ``_host_timesteps`` and ``_first_index``)."""

    def _start(self, value: float | None, position: int) -> DPMStart:
        """The step from host timestep ``value`` (None: a device timestep, trusted to be the loop's next one)
        at loop ``position`` (which settles repeated timesteps)."""
        n = self.num_inference_steps
        if value is None or (position < n and self._host_timesteps[position] == value):
            if position >= n:
                raise ValueError(f"the loop has already taken all {n} steps; call set_timesteps() again.")
            i = position
        elif value in self._first_index:
            i = self._first_index[value]
        else:
            return self._off_schedule_start(value)
        return DPMStart(i, self._a[i], self._b[i], self._lam[i], i + 1, self._b_ratio[i])

    def _off_schedule_start(self, value: float) -> DPMStart:
        """A first-order step from the exact path point of an off-schedule host timestep (module docstring)."""
        T = self.config.num_train_timesteps
        t = torch.tensor(value, dtype=torch.float64)
        check_step_timesteps(t, T if self.noise_path == "flow" else T - 1, False)
        a, b = (v.to(torch.float64) for v in signal_noise_at(self, t, dtype=torch.float32))  # float32, as the grid
        if a == 0 and self.config.prediction_type == "epsilon":
            raise ValueError(f"timestep {value:g} has a = 0 (λ = −∞): an ε-prediction says nothing about x0 there.")
        if a == 0 and self.config.algorithm_type == "sde-dpmsolver":
            raise ValueError(f"timestep {value:g} has a = 0: sde-dpmsolver's step from there is infinite (a_next/a); "
                             "choose algorithm_type='sde-dpmsolver++'.")
        target = int(np.sum(np.asarray(self._host_timesteps) > value))  # the first grid point below t
        return DPMStart(None, a, b, log_snr(a, b), target, self._b[target] / b)

    def _consecutive_history(self, start: DPMStart, example: int | None = None) -> list[PastStep]:
        """The latest steps that led here in one line (landing at i, i − 1, ...), for one example or all.

        ``self._history`` holds (target, λ, b, order, sample, x̂0, ε̂ or None) per step, the first four per example
        (arrays) after a step with one timestep per example.
        """
        history: list[PastStep] = []
        if start.index is None:
            return history  # an off-schedule step is first order
        for target, lam, b, order, sample, x0, eps in reversed(self._history):
            if not isinstance(target, int):
                if example is None:  # a per-example entry serves the batch if all examples agree
                    if not all(np.all(v == v[0]) for v in (target, lam, b, order)):
                        break
                    example_ = 0
                else:
                    example_ = example
                target, order = int(target[example_]), int(order[example_])
                lam, b = (torch.tensor(v[example_], dtype=torch.float64) for v in (lam, b))
            if target != start.index - len(history):
                break
            history.append(PastStep(lam, b, sample, x0, order, eps))
        return history

    def _advance(self, x, out, start: DPMStart, history: list[PastStep], rows=None, noise=None):
        """(x_next, x̂0, the corrected start sample, order, ε̂ or None) of one step from ``start`` on ``rows`` (all
        when None); ``noise``: z of the whole batch for the SDE types."""
        if rows is not None:
            x, out = x[rows], out[rows]
            noise = None if noise is None else noise[rows]
            history = [past._replace(sample=past.sample[rows], x0=past.x0[rows],
                                     eps=None if past.eps is None else past.eps[rows]) for past in history]
        x0 = self._data_prediction(out, x, start.a, start.b)
        algorithm = self.config.algorithm_type
        noise_form = algorithm in ("dpmsolver", "sde-dpmsolver")
        eps = self._noise_prediction(out, x, start.a, start.b, x0) if noise_form else None
        if history and self.config.corrector != "none":
            x_predicted, x = x, self._corrected(x, x0, start, history)
            if self.config.corrector_reuses != "x0":
                x0 = x0 + corrected_prediction_shift(self.config.corrector_reuses, start.a, start.b) * (x - x_predicted)
        order = 1 if start.index is None else self._order_at(start.index, len(history))
        lam, lam_next, a_next, b_ratio = start.lam, self._lam[start.target], self._a[start.target], start.b_ratio
        solver_type = self.config.solver_type
        eta, pp_noise = (1.0, noise) if algorithm == "sde-dpmsolver++" else (0.0, None)
        if order == 1 and history and self.config.final_step == "sigma_squared" and bool(torch.isinf(lam_next)):
            x_next = clean_endpoint_step(x0, history[0].x0, lam, history[0].lam)
        elif order == 1:  # the data form for every algorithm type (noise form: the same step, exact at the ends)
            x_next = dpmpp_first_order_step(x, x0, lam, lam_next, a_next, b_ratio, eta, pp_noise)
        elif solver_type in ("bh1", "bh2"):  # UniP-p
            points = [(past.lam, past.x0) for past in history[: order - 1]]
            x_next = unipc_update(x, x0, lam, points, lam_next, a_next, b_ratio, solver_type)
        elif noise_form:  # (a, x0) ↔ (b, ε): λ → −λ, a_next → b_next, b_next/b → a_next/a, D → ε̂
            ds, lams = [eps, *(past.eps for past in history)], [-lam, *(-past.lam for past in history)]
            x_next = self._multistep(order, x, ds, lams, -lam_next, self._b[start.target], a_next / start.a)
        else:
            ds, lams = [x0, *(past.x0 for past in history)], [lam, *(past.lam for past in history)]
            x_next = self._multistep(order, x, ds, lams, lam_next, a_next, b_ratio, eta, pp_noise)
        if algorithm == "sde-dpmsolver":
            x_next = dpm_noise_sde_step(x_next, x, a_next / start.a, self._b[start.target], lam_next - lam, noise)
        return x_next, x0, x, order, eps

    def _multistep(self, order: int, x, ds, lams, lam_next, a_next, b_ratio, eta=0.0, noise=None):
        """The 2M/3M DPM-Solver++ update from x with the estimates ``ds`` (this step's first) at ``lams``."""
        if order == 2:
            return dpmpp_second_order_step(x, ds[0], ds[1], lams[1], lams[0], lam_next, a_next, b_ratio,
                                           self.config.solver_type, eta, noise)
        return dpmpp_third_order_step(x, *ds[:3], lams[2], lams[1], lams[0], lam_next, a_next, b_ratio,
                                      self.config.third_order == "diffusers", eta, noise)

    def _corrected(self, x: torch.Tensor, x0: torch.Tensor, start: DPMStart, history: list[PastStep]) -> torch.Tensor:
        """UniC-p: the step that led to ``start`` recomputed with this point's x̂0 (p = that step's order)."""
        past, *older = history
        variant = self.config.corrector.removeprefix("unic_")
        if variant == "bh1" and not bool(torch.isfinite(past.lam)):
            return x  # B(h) = h is infinite for a step from λ = −∞ (samplers/unipc.py, UniP/UniC ends)
        points = [(p.lam, p.x0) for p in older[: past.order - 1]] + [(start.lam, x0)]
        return unipc_update(past.sample, past.x0, past.lam, points, start.lam, start.a, start.b / past.b, variant)

    def _step_per_example(self, t: torch.Tensor, x: torch.Tensor, out: torch.Tensor, noise: torch.Tensor | None):
        """One step with a timestep per example: examples sharing a start point and history step together (each
        group reads its rows of the batch's ``noise``)."""
        if not is_host(t):
            raise ValueError(
                f"one timestep per example ({tuple(t.shape)}, on {t.device}) must be a CPU tensor for DPM-Solver: each "
                "example's grid position, history and order are chosen on the host, and reading a device tensor "
                "would synchronise. Pass timesteps.cpu() (the samples may stay on the device)."
            )
        groups: dict[tuple, tuple[DPMStart, list, list[int]]] = {}
        for example, value in enumerate(t.tolist()):
            position = self._position
            if self._history and not isinstance(self._history[-1][0], int):
                position = int(self._history[-1][0][example])  # this example's own loop position
            start = self._start(value, position)
            history = self._consecutive_history(start, example)
            key = (start.index, start.target, float(start.lam),
                   tuple((float(past.lam), float(past.b), past.order) for past in history))
            groups.setdefault(key, (start, history, []))[2].append(example)
        prev_sample = x0 = sample = eps = None
        orders = np.zeros(len(t), dtype=np.int64)
        for start, history, examples in groups.values():
            rows = torch.tensor(examples, device=x.device)
            prev_rows, x0_rows, sample_rows, orders[examples], eps_rows = self._advance(x, out, start, history, rows,
                                                                                       noise)
            if prev_sample is None:
                prev_sample, x0, sample = (v.new_empty(x.shape) for v in (prev_rows, x0_rows, sample_rows))
                eps = None if eps_rows is None else eps_rows.new_empty(x.shape)
            prev_sample[rows], x0[rows], sample[rows] = prev_rows, x0_rows, sample_rows
            if eps is not None:
                eps[rows] = eps_rows
        starts = {example: start for start, _, examples in groups.values() for example in examples}
        targets = np.array([starts[b].target for b in range(len(t))])
        lams, bs = (np.array([float(getattr(starts[b], name)) for b in range(len(t))]) for name in ("lam", "b"))
        return prev_sample, x0, (targets, lams, bs, orders, sample, x0, eps)
