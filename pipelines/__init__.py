"""The scratch-diffusion pipeline, installed as ``scratch_diffusion.pipelines``."""

from .pipeline_scratch_diffusion import ScratchDiffusionPipeline, resolve_parametrization

__all__ = ["ScratchDiffusionPipeline", "resolve_parametrization"]
