"""Saving and loading of ``ScratchDiffusionPipeline``: the shipped code it writes, the installed classes it loads."""

from __future__ import annotations

import json
import os

from diffusers import DiffusionPipeline

from .loading import installed_folder
from .remote_code import installed_model_index, running_from_bundle, shipped_model_index, write_shipped_code


class SavedPipelineMixin:
    """``save_pretrained`` writes ``model_index.json`` naming the shipped file; ``from_pretrained`` loads ours.

    Mixed into a ``DiffusionPipeline`` subclass (before it in the bases), whose methods ``super()`` reaches.
    """

    def save_config(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """Write ``model_index.json`` and the shipped code it names (see ``remote_code.py``).

        ``save_pretrained`` calls this after saving the components and before any upload.
        """
        write_shipped_code(save_directory, type(self), self.components)
        super().save_config(save_directory, push_to_hub=push_to_hub, **kwargs)

    def to_json_string(self) -> str:
        """``model_index.json`` as saved: ``_class_name`` and our components point at the shipped file."""
        index = shipped_model_index(json.loads(super().to_json_string()), type(self), self.components)
        return json.dumps(index, indent=2, sort_keys=True) + "\n"

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict:
        # diffusers reads model_index.json through this hook both in `download` and in `load_config`.
        return installed_model_index(super()._dict_from_json_file(json_file))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> DiffusionPipeline:
        """Load a saved pipeline from a folder or Hub repo id with the installed classes.

        No remote code is loaded or run: a scheduler saved as ``["scratch_diffusion", <class>]`` is
        built from the installed class of that name; everything else (download and its validation,
        the UNet and the optional VAE, dtype and device options) is diffusers' ``DiffusionPipeline.from_pretrained``.
        Weights load only from safetensors files (``use_safetensors=True`` unless given), and the
        folder is checked first (:func:`check_saved_folder`): a corrupt or truncated file raises
        :class:`SavedPipelineError` naming it; keys this version does not know are warned about.
        """
        if running_from_bundle() or "scheduler" in kwargs:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        kwargs.setdefault("use_safetensors", True)  # weights are never unpickled (.bin files are refused)
        name = str(pretrained_model_name_or_path)
        folder = installed_folder(cls, name, kwargs)  # also sets kwargs["scheduler"] to an installed class of ours
        pipeline = super().from_pretrained(folder, **kwargs)
        pipeline.register_to_config(_name_or_path=name)
        return pipeline
