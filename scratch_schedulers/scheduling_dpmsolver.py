"""Multistep DPM-Solver++ (Lu et al., 2022) over the VP or the flow path, for 🤗 diffusers.

The update rules are :func:`~scratch_schedulers.samplers.dpmpp_first_order_step` and its 2M/3M
siblings, written once in the path's log-SNR λ = log(a/b), with a noise fraction η for the stochastic
solver; the noise-prediction DPM-Solver is the same rules with (a, x0) and (b, ε) swapped. The class is
assembled from two mixins: :class:`~.dpm_schedule.DPMSolverSchedule` checks the config and builds the grid of
path points (a_i, b_i, λ_i) in float64 on the host (``set_timesteps``), :class:`~.dpm_stepping.DPMSolverStepping`
finds where a step starts, keeps the multistep history and calls the update rule. This module holds the config
(``__init__``), ``step`` (the model output converted into x̂0 and ε̂, the SDE's noise drawn) and ``add_noise``.
The config is key-for-key diffusers' ``DPMSolverMultistepScheduler`` (all four
``algorithm_type`` values), plus ``time_grid`` (one choice instead of the ``use_*_sigmas`` booleans),
``third_order``, and the UniC corrector of UniPC with its few-step companions (``corrector``,
``corrector_reuses``, ``final_step``; ``FEW_STEP_CONFIG`` is the recommended few-step setting). Deliberate
differences from diffusers are listed in the class docstring.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.utils.torch_utils import randn_tensor

from .dpm_schedule import SDE_ALGORITHM_TYPES, DPMSolverSchedule
from .dpm_stepping import DPMSolverStepping
from .noise_path import (
    BetaSchedule,
    TimestepSpacing,
    append_dims,
    eps_to_x0,
    make_betas,
    rescale_zero_terminal_snr,
    v_to_eps,
    v_to_x0,
    velocity_to_eps,
    velocity_to_x0,
    x0_to_eps,
)
from .samplers import dynamic_threshold
from .scheduling_common import (
    Generators,
    ScratchScheduler,
    check_same_shape,
    check_step_shapes,
    check_step_timesteps,
    check_timestep_batch,
    in_working_precision,
    is_host,
    step_result,
    timestep_tensor,
)
from .scheduling_ddpm import LEARNED_VARIANCE_TYPES, VarianceType
from .scheduling_vp import VP_COMPATIBLES

# The documented few-step (5–20 evaluations) configuration, both paths: ScratchDPMSolverScheduler(**FEW_STEP_CONFIG).
FEW_STEP_CONFIG = {"solver_order": 3, "time_grid": "flow_uniform", "corrector": "unic_bh2",
                   "corrector_reuses": "gaussian", "final_step": "sigma_squared"}


class ScratchDPMSolverScheduler(DPMSolverSchedule, DPMSolverStepping, ScratchScheduler):
    """Multistep DPM-Solver(++) of order 1–3, ODE or SDE, with the config of ``diffusers.DPMSolverMultistepScheduler``.

    Args:
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr:
            the VP training path (as in :class:`~scratch_schedulers.ScratchDDPMScheduler`).
        solver_order: 1 (DDIM), 2 (2M) or 3 (3M).
        prediction_type: ``epsilon``, ``sample``, ``v_prediction`` (VP path) or ``flow_prediction``
            (u = ε − x0; flow path, which also takes ``epsilon`` and ``sample``).
        thresholding, dynamic_thresholding_ratio, sample_max_value: Imagen's dynamic thresholding of x̂0.
        algorithm_type: ``dpmsolver++`` (the data-prediction ODE solver), ``sde-dpmsolver++`` (its SDE, noise
            fraction η = 1: :func:`~scratch_schedulers.samplers.dpmpp_first_order_step` and siblings), ``dpmsolver``
            (noise-prediction form, Lu et al., 2022a) or ``sde-dpmsolver`` (its SDE:
            :func:`~scratch_schedulers.samplers.dpm_noise_sde_step`). The SDE types draw z once per step with
            ``randn_tensor`` from ``step``'s ``generator`` (a list of B: example i's from the i-th), as diffusers.
            The UniC ``corrector``, UniP ``solver_type`` ``bh1``/``bh2`` and ``final_step="sigma_squared"`` assume the
            data-form ODE and are refused with the others (``final_step`` is allowed with ``dpmsolver``); so is
            ``final_sigmas_type="zero"`` with ``sde-dpmsolver`` (its last step would keep noise b_next·√(e^{2h} − 1)·z
            = 0·∞), as in diffusers.
        solver_type: the 2M variant, ``midpoint`` (Algorithm 2) or ``heun`` (Taylor weights); or ``bh1``/``bh2``:
            the UniP-p predictor of UniPC (Zhao et al., 2023; :func:`~scratch_schedulers.samplers.unipc_update`):
            2M midpoint (bh2) or weight a·h/2 (bh1) at order 2, the Taylor 3M at order 3 (``third_order`` unused).
        lower_order_final, euler_at_final, final_sigmas_type: as diffusers (order 1 at a step to σ = 0;
            orders ≤ 2, 1 at the last two steps below 15 steps).
        use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas, use_lu_lambdas: diffusers' VP grids.
        use_flow_sigmas, flow_shift, use_dynamic_shifting, time_shift_type: the flow path x = (1 − σ)·x0 + σ·ε
            with σ shifted by ``flow_shift`` (or e^μ from ``set_timesteps(mu=...)``).
        lambda_min_clipped: timesteps with λ below this are not visited.
        variance_type: ``learned``/``learned_range`` models return a variance block, ignored here; DDPM's fixed
            types (what a DDPM config brings to ``from_config``) mean no block, as ``None`` does.
        timestep_spacing, steps_offset: diffusers' DPM-Solver spacings (``linspace``, ``leading``, ``trailing``).
        time_grid: None (diffusers' grid from the keys above), or ``logsnr``, ``karras`` or ``flow_uniform``
            (:func:`~scratch_schedulers.dpm_grids.time_grid_lambdas`); timesteps then sit exactly at
            their noise level (fractional on the VP path).
        third_order: ``taylor`` (weight 2·a·φ3 on D2, third order) or ``diffusers`` (a·φ3, as the
            reference code: only second order; kept for step-by-step parity).
        corrector: ``none``, or ``unic_bh1``/``unic_bh2``: UniPC's UniC corrector, which refines each sample with
            the model output evaluated there before the next step, at no extra model evaluation (:mod:`.dpm_stepping`).
            ``solver_type="bh2", corrector="unic_bh2"`` is diffusers' ``UniPCMultistepScheduler`` (bh2).
        corrector_reuses: the x̂0 the next step uses at the corrected sample x_c (no model call there): ``x0`` the
            predicted sample's (UniPC), ``epsilon`` the one with its ε̂, ``gaussian`` shifted by a/(a² + b²)·(x_c − x̃)
            (:func:`~scratch_schedulers.samplers.corrected_prediction_shift`).
        final_step: ``x0`` (the last step to σ = 0 returns x̂0) or ``sigma_squared`` (extrapolates the last two x̂0s
            to σ = 0, exact to O(σ³): :func:`~scratch_schedulers.samplers.clean_endpoint_step`).
        tuned_grids: ``{n: [s_0, …, s_{n−1}]}``, n-step grids in flow time s = b/(a + b) (descending, in (0, 1); the
            final point follows as configured) that ``set_timesteps(n)`` uses instead of the grid keys and the shift,
            timesteps exactly at their level; other n keep the configured grid (:mod:`.grid_search` tunes them).

    Few steps (5–20 model evaluations), both paths: ``ScratchDPMSolverScheduler(**FEW_STEP_CONFIG)`` (3M, UniC bh2,
    ``corrector_reuses="gaussian"``, ``final_step="sigma_squared"``, ``time_grid="flow_uniform"``) had the lowest
    ODE endpoint error of our configurations in ``benchmarks/bench_few_step.py``: on the example mixture 0.38 /
    0.09 / 0.09× the best diffusers scheduler at 5 / 10 / 20 evaluations on the VP path, 0.64 / 0.42 / 0.42× on
    the flow path. The constructor defaults stay diffusers' for parity.

    Differences from diffusers (each tested in ``tests/scratch_schedulers/test_dpmsolver.py``):
    ᾱ = 0 with ``rescale_betas_zero_snr`` is kept exact (λ = −∞; diffusers sets ᾱ = 2⁻²⁴);
    ``third_order="taylor"``; ``sde-dpmsolver++`` at order 3 weighs D2 with the Taylor weight (diffusers' has a sign
    error: first-order accurate; ``test_dpmsolver_sde.py``) and ``sde-dpmsolver`` has order 3 (diffusers' crashes);
    ``dpmsolver`` accepts ``final_sigmas_type="zero"`` (its last step is order 1, as ``dpmsolver++``'s; diffusers
    refuses it) and ``flow_prediction``; custom flow timesteps mean σ = t/T; ``final_sigmas_type="sigma_min"``
    on the flow path ends at the smallest training σ (diffusers uses the VP value); float64 samples stay
    float64; a ``use_*_sigmas`` key with ``use_flow_sigmas`` and a prediction type the path cannot
    use raise a ``ValueError`` instead of sampling on mixed paths.
    """

    _compatibles = [*VP_COMPATIBLES]  # noqa: RUF012

    # The VP keys repeat ScratchDDPMScheduler's on purpose: @register_to_config turns exactly these arguments,
    # in diffusers' order and with its defaults, into DPMSolverMultistepScheduler's config (see scheduling_ddim.py).
    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: Literal["epsilon", "sample", "v_prediction", "flow_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: Literal["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"] = "dpmsolver++",
        solver_type: Literal["midpoint", "heun", "bh1", "bh2"] = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: VarianceType | None = None,
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
        time_grid: Literal["logsnr", "karras", "flow_uniform"] | None = None,
        third_order: Literal["taylor", "diffusers"] = "taylor",
        corrector: Literal["none", "unic_bh1", "unic_bh2"] = "none",
        corrector_reuses: Literal["x0", "epsilon", "gaussian"] = "x0",
        final_step: Literal["x0", "sigma_squared"] = "x0",
        tuned_grids: dict[int | str, list[float]] | None = None,
    ):
        self._check_config()
        self.noise_path = "flow" if use_flow_sigmas else "vp"
        betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas)
        if rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if self.noise_path == "vp":  # the flow path has no ᾱ (diffusers tells the paths apart by it)
            self.betas, self.alphas, self.alphas_cumprod = betas, 1.0 - betas, alphas_cumprod
        with np.errstate(divide="ignore"):  # s = b/a per training timestep; +∞ where ᾱ = 0
            self._level_table = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).to(torch.float64).numpy()
        self.sigmas = torch.from_numpy(self._level_table).to(torch.float32)
        self.num_inference_steps: int | None = None
        self.timesteps = torch.from_numpy(np.arange(num_train_timesteps)[::-1].copy())

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the loop at ``self.timesteps[begin_index]`` (image-to-image); clears the history."""
        self._position = begin_index
        self._history: list[tuple] = []  # (grid index landed on, start λ and b, order, start sample, x̂0) per step

    # ---- sampling (where a step starts and the history: dpm_stepping.DPMSolverStepping) -------

    def _order_at(self, i: int, available: int) -> int:
        """Solver order of step i given ``available`` consecutive earlier x̂0s (diffusers' rule)."""
        cfg, n = self.config, self.num_inference_steps
        cap = cfg.solver_order
        few = cfg.lower_order_final and n < 15
        if i == n - 1 and (cfg.euler_at_final or few or cfg.final_sigmas_type == "zero"):
            cap = 1  # to b_next = 0 (λ = +∞) only order 1 is finite, and it returns x̂0 exactly
        elif i == n - 2 and few:
            cap = min(cap, 2)
        return min(cap, available + 1)

    def _data_prediction(self, model_output: torch.Tensor, x: torch.Tensor, a, b) -> torch.Tensor:
        """x̂0 from the model output at path point (a, b), thresholded if configured."""
        cfg = self.config
        if cfg.prediction_type == "epsilon":
            x0 = eps_to_x0(model_output, x, a, b)
        elif cfg.prediction_type == "v_prediction":
            x0 = v_to_x0(model_output, x, a, b)
        elif cfg.prediction_type == "flow_prediction":
            x0 = velocity_to_x0(model_output, x, b)
        else:
            x0 = model_output
        if cfg.thresholding:
            x0 = dynamic_threshold(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        return x0

    def _noise_prediction(self, model_output: torch.Tensor, x: torch.Tensor, a, b, x0: torch.Tensor) -> torch.Tensor:
        """ε̂ for the noise-form solvers: from the model output directly, as diffusers (from the thresholded x̂0
        when thresholding)."""
        prediction_type = self.config.prediction_type
        if self.config.thresholding or prediction_type == "sample":
            return x0_to_eps(x0, x, a, b)
        if prediction_type == "epsilon":
            return model_output
        if prediction_type == "v_prediction":
            return v_to_eps(model_output, x, a, b)
        return velocity_to_eps(model_output, x, b)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: Generators = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        """One multistep DPM-Solver(++) step from ``timestep`` to the next grid point below it (:mod:`.dpm_stepping`).

        Args:
            model_output: the model's prediction at (sample, timestep), in ``prediction_type``.
            timestep: a value of ``self.timesteps``, any other t in the path's range, or a (B,) CPU tensor of
                one per example (each example keeps its own history: lock-step loops give each its own order).
            sample: x at that timestep, shape (B, C, ...).
            generator: torch generator(s) for the SDE types' noise z (a list of B draws example i's from the i-th,
                as that example alone would); unused by the ODE types.
            variance_noise: z itself (the sample's shape) instead of drawing it; takes precedence over ``generator``.
            return_dict: return a :class:`ScratchSchedulerOutput` rather than a tuple (prev_sample, x̂0).
        """
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps() before step().")
        check_step_shapes(model_output, sample, allow_variance=self.config.variance_type in LEARNED_VARIANCE_TYPES)
        t = timestep_tensor(timestep, sample)
        x, out = in_working_precision(sample, model_output)
        out = out[:, : x.shape[1]]
        noise = None
        if self.config.algorithm_type in SDE_ALGORITHM_TYPES:  # one draw per step for the batch, as diffusers
            if variance_noise is None:
                noise = randn_tensor(x.shape, generator=generator, device=sample.device, dtype=torch.float32)
            else:
                check_same_shape(variance_noise, sample, "variance_noise", "sample")
                noise = variance_noise.to(device=sample.device)
            noise = noise.to(x.dtype)
        if t.ndim == 0:
            start = self._start(float(t) if is_host(t) else None, self._position)
            prev_sample, x0, corrected, order, eps = self._advance(x, out, start, self._consecutive_history(start),
                                                                   noise=noise)
            entry = (start.target, start.lam, start.b, order, corrected, x0, eps)
        else:
            prev_sample, x0, entry = self._step_per_example(t, x, out, noise)
        self._history = [*self._history[-2:], entry]  # 3M needs the last two, its UniC-3 corrector three
        target = entry[0]  # the grid index landed on: an int, or an array of one per example
        self._position = target if isinstance(target, int) else int(target.min())
        return step_result(prev_sample, x0, sample.dtype, return_dict)

    # ---- forward process (training, img2img) -------------------------------------------------

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = a_t·x0 + b_t·ε at training timesteps: VP a = √ᾱ_t (integer t), flow a = 1 − t/T."""
        check_same_shape(original_samples, noise, "original_samples", "noise")
        check_timestep_batch(timesteps, original_samples)
        T = self.config.num_train_timesteps
        host = torch.as_tensor(timesteps)
        if host.device.type == "cpu":  # validated like step's timesteps; device ones are not read back
            check_step_timesteps(host, T if self.noise_path == "flow" else T - 1, integer=self.noise_path == "vp")
        t = host.to(original_samples.device)
        if self.noise_path == "flow":
            sigma = append_dims(t.to(torch.float32) / T, original_samples.ndim).to(original_samples.dtype)
            return (1 - sigma) * original_samples + sigma * noise
        alpha_bar = self.alphas_cumprod.to(original_samples.device)[t.long()]
        alpha_bar = append_dims(alpha_bar, original_samples.ndim).to(original_samples.dtype)
        return alpha_bar**0.5 * original_samples + (1 - alpha_bar) ** 0.5 * noise
