"""The pipeline's components, one row each: what every part of the package reads to know them.

A row names the component (its ``model_index.json`` key and folder), its class and library, the classes
of ours a saved ``["scratch_diffusion", <class>]`` entry may name (shipped as our code, loaded as the
installed class), the files a saved folder must hold, whether it is optional, the check that it fits the
pipeline's other components, and whether the likelihood code can use a pipeline that has it. The
pipeline's signature and ``_optional_components``, the saved-folder checks, loading, the Hub push's
completeness check, the trainer's export and the likelihood refusal all read :data:`COMPONENTS`.

Adding an optional component is one :func:`register_component` call (a row) plus its own module.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from diffusers import AutoencoderKL, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from scratch_diffusion.control.controlnet import ControlNet2DModel, check_controlnet_fits_unet
from scratch_diffusion.few_step.flow_map_unet import FlowMapUNet2DModel
from scratch_diffusion.guidance.models import check_classifier_fits_unet, check_guide_fits_unet
from scratch_diffusion.guidance.noisy_classifier import NoisyClassifier
from scratch_schedulers import (
    ScratchDDIMScheduler,
    ScratchDDPMScheduler,
    ScratchDPMSolverScheduler,
    ScratchFlowMapScheduler,
    ScratchFlowMatchScheduler,
)

from .latents import check_vae_fits_unet

# What a diffusers model folder holds (``save_pretrained`` with safetensors).
MODEL_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


@dataclass(frozen=True)
class Component:
    """One component of the pipeline (see the module docstring).

    Attributes:
        name: the ``model_index.json`` key, the folder name and the pipeline's keyword.
        cls: the class it is checked against (a model's config keys are checked against its ``__init__``).
        library: where diffusers finds ``cls`` (``"diffusers"``).
        optional: absent components are ``None`` (a saved folder then has no entry for it).
        ours: our classes by name that a saved ``["scratch_diffusion", <class>]`` entry may name.
        files: the files its folder must hold, relative to it.
        model: a model with weights (``config.json`` and safetensors files checked), not a scheduler.
        fits: ``fits(component, unet_config)`` raises ``ValueError`` where it does not fit the UNet.
        pixel_space: False where it changes what the UNet models (a VAE: latents), which the likelihood
            code refuses.
    """

    name: str
    cls: type
    library: str = "diffusers"
    optional: bool = True
    ours: Mapping[str, type] = field(default_factory=dict)
    files: tuple[str, ...] = MODEL_FILES
    model: bool = True
    fits: Callable[[object, Mapping], None] | None = None
    pixel_space: bool = True


# Our scheduler classes by name: what a saved ``["scratch_diffusion", <class>]`` scheduler entry may name.
SHIPPED_SCHEDULERS: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        ScratchDDPMScheduler,
        ScratchDDIMScheduler,
        ScratchDPMSolverScheduler,
        ScratchFlowMatchScheduler,
        ScratchFlowMapScheduler,
    )
}

COMPONENTS: dict[str, Component] = {}
# Called with each new row (the pipeline class refreshes its signature and optional components).
_on_register: list[Callable[[Component], None]] = []


def register_component(component: Component) -> Component:
    """Add a row to :data:`COMPONENTS` (its name must be new) and tell the pipeline class."""
    if component.name in COMPONENTS:
        raise ValueError(f"a component named {component.name!r} is registered already; known: {list(COMPONENTS)}.")
    COMPONENTS[component.name] = component
    for listener in _on_register:
        listener(component)
    return component


def unregister_component(name: str) -> None:
    """Remove an optional row again (tests register throwaway components)."""
    component = COMPONENTS[name]
    if not component.optional:
        raise ValueError(f"{name!r} is a required component and cannot be removed.")
    del COMPONENTS[name]
    for listener in _on_register:
        listener(component)


def optional_components() -> list[str]:
    """The names of the optional components, in table order."""
    return [name for name, component in COMPONENTS.items() if component.optional]


def model_components() -> dict[str, type]:
    """Every model component (weights in its folder) and the class its config is checked against."""
    return {name: component.cls for name, component in COMPONENTS.items() if component.model}


def declares_components(pipeline_cls: type) -> type:
    """Class decorator: declare the table's components to diffusers, now and after every registration.

    diffusers finds a pipeline's components in ``__init__``'s signature and ``_optional_components``; each
    row the signature as written lacks becomes a keyword-only ``name=None`` there (``__init__`` takes it in
    ``**components``).
    """
    written = inspect.signature(pipeline_cls.__init__)

    def refresh(_component: Component | None = None) -> None:
        pipeline_cls._optional_components = optional_components()
        parameters = [p for p in written.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        declared = {p.name for p in parameters}
        parameters += [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
            for name in COMPONENTS
            if name not in declared
        ]
        pipeline_cls.__init__.__signature__ = written.replace(parameters=parameters)

    refresh()
    _on_register.append(refresh)
    return pipeline_cls


def listed_components(index: Mapping) -> list[Component]:
    """The components a saved ``model_index.json`` lists (absent and ``[null, null]`` entries left out)."""
    return [
        component
        for name, component in COMPONENTS.items()
        if isinstance(index.get(name), list) and index[name] and index[name][0] is not None
    ]


# A flow map (MeanFlow) is a UNet2DModel with a second time input: saved as ["scratch_diffusion", its class].
register_component(Component("unet", UNet2DModel, optional=False, ours={"FlowMapUNet2DModel": FlowMapUNet2DModel}))
register_component(
    Component(
        "scheduler",
        SchedulerMixin,
        optional=False,
        ours=SHIPPED_SCHEDULERS,
        files=("scheduler_config.json",),
        model=False,
    )
)
register_component(Component("vae", AutoencoderKL, fits=check_vae_fits_unet, pixel_space=False))
# Autoguidance's guide (Karras et al., 2024): a smaller or shorter-trained UNet of the same path and space.
register_component(Component("guide_unet", UNet2DModel, fits=check_guide_fits_unet))
# Classifier guidance's noise-aware classifier p_φ(y | x_t) (training/train_classifier.py trains one).
register_component(
    Component(
        "classifier", NoisyClassifier, ours={"NoisyClassifier": NoisyClassifier}, fits=check_classifier_fits_unet
    )
)
# ControlNet (Zhang et al., 2023): residuals for the UNet's skips and mid block from a control image.
register_component(
    Component(
        "controlnet",
        ControlNet2DModel,
        ours={"ControlNet2DModel": ControlNet2DModel},
        fits=check_controlnet_fits_unet,
    )
)
