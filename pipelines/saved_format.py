"""Checks of a saved pipeline folder before diffusers reads it: every corrupt file is named.

diffusers' own errors for a truncated ``.safetensors`` file or a half-written JSON config point
into its internals; :func:`check_saved_folder` raises :class:`SavedPipelineError` naming the file
instead, refuses pickle-only model weights, and warns about config keys this version does not know.
The model folders checked are those of the component table (``components.py``) that the index lists:
``unet/`` and, for a latent pipeline, ``vae/``.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings

from .components import SHIPPED_SCHEDULERS, model_components
from .remote_code import BUNDLE_MODULE

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class SavedPipelineError(OSError):
    """A file of a saved pipeline folder is corrupt, truncated or of a refused kind; the message names it."""


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON object from ``path``, or a :class:`SavedPipelineError` naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SavedPipelineError(
            f"{path} is not valid JSON ({err}); the file is corrupt or truncated. Re-save or re-download the pipeline."
        ) from None
    if not isinstance(data, dict):
        raise SavedPipelineError(f"{path} holds a JSON {type(data).__name__}, not an object; it is not a config file.")
    return data


def _check_safetensors(path: str | os.PathLike) -> None:
    """The header of a safetensors file parses and the file is exactly as long as the header says."""
    size = os.path.getsize(path)
    problem = None
    with open(path, "rb") as f:
        head = f.read(8)
        header_length = int.from_bytes(head, "little") if len(head) == 8 else None
        if header_length is None or header_length > size - 8:
            problem = f"{size} bytes, shorter than its header"
        else:
            try:
                header = json.loads(f.read(header_length))
                end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
                problem = f"unreadable header ({type(err).__name__})"
            else:
                if size != 8 + header_length + end:
                    problem = f"{size} bytes where its header says {8 + header_length + end}"
    if problem is not None:
        raise SavedPipelineError(
            f"{path} is truncated or not a safetensors file ({problem}); re-save or re-download the pipeline."
        )


def _warn_unknown_keys(path: str | os.PathLike, config: dict, known: set[str]) -> None:
    unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
    if unknown:
        import diffusers

        warnings.warn(
            f"{path}: keys {unknown} are not known to this version and are ignored; the file was probably written by "
            f"a newer version (its _diffusers_version is {config.get('_diffusers_version')!r}, installed "
            f"{diffusers.__version__}). Upgrade scratch-diffusion/diffusers if the pipeline misbehaves.",
            UserWarning,
            stacklevel=4,
        )


def _init_keys(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}


def check_saved_folder(folder: str | os.PathLike, pipeline_cls: type | None = None) -> None:
    """Check a saved pipeline folder before diffusers reads it; raise :class:`SavedPipelineError` naming the file.

    ``model_index.json``, ``scheduler/scheduler_config.json`` and the ``config.json`` of every model
    component of the table that the index lists (``unet/``; a latent pipeline's ``vae/``) must be JSON
    objects; each such folder must exist, and every ``*.safetensors`` file in it must be complete (header and
    length); a model with only pickle-based weights (``.bin``, ``.pt``, ``.ckpt``) is refused. Keys
    unknown to the installed classes (a folder from a newer version) are reported with a
    ``UserWarning``. Any other missing file is left to diffusers' own error.
    """
    root = os.fspath(folder)
    index_path = os.path.join(root, "model_index.json")
    if not os.path.isfile(index_path):
        return
    index = read_json_object(index_path)
    if pipeline_cls is not None:
        _warn_unknown_keys(index_path, index, _init_keys(pipeline_cls))
    scheduler_entry = index.get("scheduler")
    scheduler_config = os.path.join(root, "scheduler", "scheduler_config.json")
    if scheduler_entry is not None and os.path.isfile(scheduler_config):
        config = read_json_object(scheduler_config)
        scheduler_cls = SHIPPED_SCHEDULERS.get(scheduler_entry[1]) if isinstance(scheduler_entry, list) else None
        if scheduler_cls is not None and scheduler_entry[0] == BUNDLE_MODULE:
            _warn_unknown_keys(scheduler_config, config, _init_keys(scheduler_cls))
    for name, model_cls in model_components().items():
        entry = index.get(name)
        if isinstance(entry, list) and entry and entry[0] is not None:  # absent, or diffusers' [null, null]
            _check_model_folder(root, name, entry, model_cls)


def _check_model_folder(root: str, name: str, entry: object, model_cls: type) -> None:
    """``<root>/<name>/``: present with a JSON ``config.json``, complete safetensors weights, not pickle-only."""
    model_dir = os.path.join(root, name)
    if not os.path.isdir(model_dir):
        raise SavedPipelineError(
            f"model_index.json in {root} lists {name} {entry} but the folder {model_dir} is missing; "
            "the pipeline was saved or downloaded incompletely. Re-save or re-download it."
        )
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise SavedPipelineError(
            f"{model_dir} has no config.json, so {name} {entry} cannot be built; re-save or re-download the pipeline."
        )
    config = read_json_object(config_path)
    if entry == ["diffusers", model_cls.__name__]:
        _warn_unknown_keys(config_path, config, _init_keys(model_cls))
    names = sorted(os.listdir(model_dir))
    weights = [n for n in names if n.endswith(".safetensors")]
    for weight in weights:
        _check_safetensors(os.path.join(model_dir, weight))
    pickled = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if not weights and pickled:
        raise SavedPipelineError(
            f"{model_dir} holds only pickle-based weights {pickled}; scratch-diffusion loads weights only from "
            "safetensors files, because unpickling can run code. Convert them with a trusted tool and save "
            "with safe_serialization=True."
        )
