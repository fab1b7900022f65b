"""The path a model was trained on, as a clock: from a log-SNR λ to the model's timestep and path point.

A model is evaluated at the point of its own path with the sampler's SNR (``path_change``); :class:`ModelPath`
holds what that needs — the parametrisation, ``num_train_timesteps`` and, on the VP path, the log-SNR table of
the training schedule, built from the ``noise_schedule`` dict a pipeline records (:data:`VP_SCHEDULE_DEFAULTS`'
keys on the VP path, ``num_train_timesteps`` on the flow path). The pipeline's change of variables, the
likelihood code and the noise-aware classifier read it here.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .noise_path import Parametrization, make_betas, rescale_zero_terminal_snr
from .path_change import PathPoint, flow_model_point, vp_log_snr_table, vp_model_point

# The keys of a training scheduler's config that fix its noise path (saved as the pipeline's noise_schedule).
VP_SCHEDULE_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "rescale_betas_zero_snr": False,
}


@dataclass(frozen=True)
class ModelPath:
    """The path a UNet was trained on, with the clock that turns a log-SNR into its timestep."""

    parametrization: Parametrization
    num_train_timesteps: int
    log_snr_table: np.ndarray | None = None  # VP only: λ_t for t = 0..T−1

    @classmethod
    def from_schedule(cls, parametrization: Parametrization, schedule: Mapping) -> ModelPath:
        """Build from a ``noise_schedule`` dict (:func:`noise_schedule_of`)."""
        if parametrization.path == "flow":
            return cls(parametrization, int(schedule["num_train_timesteps"]))
        s = {**VP_SCHEDULE_DEFAULTS, **schedule}
        betas = make_betas(
            s["beta_schedule"], s["num_train_timesteps"], s["beta_start"], s["beta_end"], s["trained_betas"]
        )
        if s["rescale_betas_zero_snr"]:
            betas = rescale_zero_terminal_snr(betas)
        table = vp_log_snr_table(torch.cumprod(1.0 - betas, dim=0))
        return cls(parametrization, int(s["num_train_timesteps"]), table)

    @staticmethod
    def of_schedule(parametrization: Parametrization, schedule: Mapping) -> ModelPath:
        """:meth:`from_schedule`, built once per (parametrisation, schedule) and reused by every call."""
        return _cached_model_path(parametrization, json.dumps(schedule, sort_keys=True))

    def point(self, lam: float) -> PathPoint:
        """Where the model is evaluated for a sampler point of log-SNR ``lam``."""
        if self.parametrization.path == "flow":
            return flow_model_point(lam, self.num_train_timesteps)
        return vp_model_point(lam, self.log_snr_table)


@functools.lru_cache(maxsize=16)
def _cached_model_path(parametrization: Parametrization, schedule_json: str) -> ModelPath:
    return ModelPath.from_schedule(parametrization, json.loads(schedule_json))
