"""What a pipeline's UNet was trained to predict, and whether its scheduler can sample it.

A parametrisation is a (noise path, prediction type) pair: ``vp`` with ``epsilon``, ``sample``
or ``v_prediction`` (Ho et al., 2020; Salimans & Ho, 2022), or ``flow`` with ``flow_velocity``
(Lipman et al., 2023). The pipeline records its UNet's, with the training ``noise_schedule``; a
scheduler of another parametrisation samples it through the exact change of variables
(``cross_path.py``), which needs that schedule.
"""

from __future__ import annotations

from collections.abc import Mapping

from scratch_schedulers import Parametrization
from scratch_schedulers.noise_path import PREDICTION_TYPES, PREDICTION_TYPES_BY_PATH, parametrization_of


def resolve_parametrization(scheduler: object, prediction_type: str | None, noise_path: str | None) -> Parametrization:
    """The parametrisation a UNet was trained with: given explicitly, or that of its scheduler.

    ``prediction_type`` alone fixes the path (``flow_velocity`` ⇒ ``flow``, otherwise ``vp``);
    ``noise_path="flow"`` alone fixes ``flow_velocity``; ``noise_path="vp"`` alone takes the
    scheduler's prediction type, which must then be a VP one.
    """
    if noise_path is not None and noise_path not in PREDICTION_TYPES_BY_PATH:
        raise ValueError(f"noise_path={noise_path!r} is not supported; choose one of {list(PREDICTION_TYPES_BY_PATH)}.")
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type={prediction_type!r} is not supported; choose one of {list(PREDICTION_TYPES)}."
        )
    if prediction_type is None:
        if noise_path == "flow":
            prediction_type = "flow_velocity"
        else:
            of_scheduler = parametrization_of(scheduler)
            if noise_path is not None and of_scheduler.path != noise_path:
                raise ValueError(
                    f"noise_path={noise_path!r} but the scheduler samples the {of_scheduler.path!r} path; "
                    f"pass prediction_type too (one of {list(PREDICTION_TYPES_BY_PATH[noise_path])})."
                )
            prediction_type = of_scheduler.prediction_type
    if noise_path is None:
        noise_path = "flow" if prediction_type == "flow_velocity" else "vp"
    if prediction_type not in PREDICTION_TYPES_BY_PATH[noise_path]:
        raise ValueError(
            f"prediction_type={prediction_type!r} does not exist on the {noise_path!r} noise path; "
            f"choose one of {list(PREDICTION_TYPES_BY_PATH[noise_path])}."
        )
    return Parametrization(noise_path, prediction_type)


def check_scheduler_parametrization(
    scheduler: object, trained: Parametrization, noise_schedule: Mapping | None
) -> Parametrization:
    """The parametrisation ``scheduler`` samples with; ``ValueError`` if it cannot sample the ``trained`` model.

    The same parametrisation samples natively; any other one that ``noise_path.parametrization_of`` can
    describe goes through the change of variables, which needs the model's ``noise_schedule``.
    """
    sampled = parametrization_of(scheduler)
    if sampled != trained and noise_schedule is None:
        raise ValueError(
            f"{type(scheduler).__name__} samples the {sampled.path!r} path with "
            f"prediction_type={sampled.prediction_type!r}, but the UNet was trained on the {trained.path!r} "
            f"path to predict {trained.prediction_type!r}, and this pipeline does not record the training "
            "noise_schedule the conversion needs. Pass noise_schedule=... (the training scheduler's "
            "num_train_timesteps and β keys) or use a scheduler configured for "
            f"(noise_path={trained.path!r}, prediction_type={trained.prediction_type!r})."
        )
    return sampled
