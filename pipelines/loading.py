"""Loading a saved pipeline: a local folder or a Hub repo id, with installed code wherever possible."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from diffusers import DiffusionPipeline

from .components import COMPONENTS
from .remote_code import BUNDLE_MODULE
from .saved_format import check_saved_folder, read_json_object


def looks_like_local_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a Hub repo id.

    Hub ids are ``'name'`` or ``'owner/name'``; anything absolute, starting with ``'.'`` or
    ``'~'``, or with more than one ``'/'`` is meant as a local path.
    """
    return os.path.isabs(name) or name.startswith((".", "/", "~")) or name.count("/") > 1


def installed_folder(pipeline_cls: type, name: str, kwargs: dict) -> str:
    """The local folder ``pipeline_cls.from_pretrained(name, **kwargs)`` loads with installed classes.

    Downloads a Hub repo id (diffusers' ``download``, which validates the repo and fetches every
    component folder, a ``vae/`` included), checks the folder (:func:`check_saved_folder`), and puts
    the installed class of ours into ``kwargs[<component>]`` for every component the folder names as one
    (``components.py``: today the scheduler's).
    """
    if not os.path.isdir(name) and looks_like_local_path(name):
        raise FileNotFoundError(
            f"{name!r}: no such folder; pass a saved pipeline folder or a Hub repo id ('name' or 'owner/name')."
        )
    folder = name if os.path.isdir(name) else pipeline_cls.download(name, **kwargs)
    check_saved_folder(folder, pipeline_cls)
    index = pipeline_cls.load_config(folder)
    for component in COMPONENTS.values():
        entry = index.get(component.name)
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[0] != BUNDLE_MODULE:
            continue
        class_name = entry[1]
        if class_name not in component.ours:
            raise ValueError(
                f"{name}: {component.name} class {class_name!r} is not part of this scratch-diffusion version; "
                f"known: {sorted(component.ours)}. Upgrade the package or load with "
                "DiffusionPipeline.from_pretrained(..., trust_remote_code=True)."
            )
        kwargs[component.name] = component.ours[class_name].from_pretrained(folder, subfolder=component.name)
    return folder


def load_pipeline(path: str | os.PathLike, trust_remote_code: bool = False) -> DiffusionPipeline:
    """A saved pipeline folder, loaded with installed code where its ``model_index.json`` allows.

    A custom pipeline names its class as ``[module, class]`` (ours: ``["scratch_diffusion",
    "ScratchDiffusionPipeline"]``); if that module is installed, its class loads the folder and no
    shipped code runs. Otherwise ``DiffusionPipeline.from_pretrained`` loads it (stock diffusers
    pipelines; shipped custom code only with ``trust_remote_code=True``). Weights load only from
    safetensors files; the folder is checked first (:func:`check_saved_folder`), so a corrupt or
    truncated file is named whichever class loads it. A ``vae/`` (latent pipelines) loads with the rest.
    """
    # Importing this module imported its parent package scratch_diffusion, the module diffusers
    # resolves our plugin components from (it looks only in imported modules).
    check_saved_folder(path)
    class_name = read_json_object(Path(path) / "model_index.json").get("_class_name")
    if isinstance(class_name, list) and len(class_name) == 2:
        try:
            pipeline_class = getattr(importlib.import_module(class_name[0]), class_name[1])
        except (ImportError, AttributeError):
            pipeline_class = None
        if isinstance(pipeline_class, type) and issubclass(pipeline_class, DiffusionPipeline):
            return pipeline_class.from_pretrained(str(path))
        return DiffusionPipeline.from_pretrained(str(path), trust_remote_code=trust_remote_code, use_safetensors=True)
    return DiffusionPipeline.from_pretrained(str(path), use_safetensors=True)
