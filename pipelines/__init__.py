"""The scratch-diffusion pipeline, installed as ``scratch_diffusion.pipelines``."""

from .latents import decode_latents, encode_to_latents, latent_scaling, vae_downsampling_factor
from .loading import load_pipeline, looks_like_local_path
from .parametrization import resolve_parametrization
from .pipeline_scratch_diffusion import ScratchDiffusionPipeline
from .saved_format import SavedPipelineError, check_saved_folder, read_json_object

__all__ = [
    "SavedPipelineError",
    "ScratchDiffusionPipeline",
    "check_saved_folder",
    "decode_latents",
    "encode_to_latents",
    "latent_scaling",
    "load_pipeline",
    "looks_like_local_path",
    "read_json_object",
    "resolve_parametrization",
    "vae_downsampling_factor",
]
