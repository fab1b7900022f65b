"""The output folder: what an earlier run left is replaced (saying so), or kept with ``--reuse``."""

from __future__ import annotations

import json
import shutil

from scratch_diffusion.demo.config import DemoConfig, DemoError

# beside pipeline/
OUTPUT_FILES = ("metrics.json", "metrics.md", "demo.png", "training.json", "guide.json", "control.json")
REPORT_FILES = OUTPUT_FILES[:3]  # rewritten by every run, --reuse included


def remove_vae_outputs(config: DemoConfig) -> None:
    """Remove the latent demo's VAE folder and latent cache of an earlier run (refusing a folder it did not write)."""
    from scratch_diffusion.training.vae import METRICS_FILE

    vae, cache = config.vae_dir, config.latent_cache_dir
    if vae.exists() and any(vae.iterdir()):
        if not (vae / METRICS_FILE).is_file():
            raise DemoError(f"{vae} exists and is not a VAE written by the demo (no {METRICS_FILE}); move it.")
        shutil.rmtree(vae)
    if cache.is_dir() and all(f.name.startswith("latents-") for f in cache.iterdir()):
        shutil.rmtree(cache)


def remove_guide_outputs(config: DemoConfig) -> None:
    """Remove an earlier run's guide folder (refusing a folder that is not a pipeline: the trainer writes one)."""
    guide = config.guide_dir
    if guide.exists() and any(guide.iterdir()):
        if not (guide / "model_index.json").is_file():
            raise DemoError(f"{guide} exists and is not a guide written by the demo (no model_index.json); move it.")
        shutil.rmtree(guide)


def remove_controlnet_outputs(config: DemoConfig) -> None:
    """Remove an earlier run's control network folder (refusing one the trainer did not write: no config.json)."""
    folder = config.output_dir / "controlnet"
    if folder.exists() and any(folder.iterdir()):
        if not (folder / "config.json").is_file():
            raise DemoError(f"{folder} exists and is not a control network written by the demo (no config.json); "
                            "move it.")  # fmt: skip
        shutil.rmtree(folder)


def prepare_output_dir(config: DemoConfig) -> dict | None:
    """Clear an earlier run's outputs (saying so), or check what ``--reuse`` keeps.

    Returns the earlier ``training.json`` record with ``--reuse`` (None when there is none).
    Only files this demo writes are removed; anything else in the folder is left alone.
    """
    out, pipeline = config.output_dir, config.pipeline_dir
    if config.reuse:
        if not (pipeline / "model_index.json").is_file():
            raise DemoError(f"--reuse: no trained pipeline at {pipeline} (no model_index.json); run without --reuse.")
        record_path = out / "training.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else None
        how = (
            f"{record['objective']}, {record['steps']} steps, {record['seconds'] / 60:.1f} min"
            if record
            else "no training.json beside it"
        )
        print(f"Reusing the trained pipeline at {pipeline} ({how}); training skipped (--reuse).")
        for name in REPORT_FILES:
            if (out / name).is_file():
                print(f"  {out / name} will be replaced.")
        return record
    if pipeline.exists():
        if any(pipeline.iterdir()) and not (pipeline / "model_index.json").is_file():
            raise DemoError(
                f"{pipeline} exists and is not a pipeline written by the demo; move it or pick --output_dir."
            )
        print(f"Replacing the earlier run in {out}: removing {pipeline} (pass --reuse to keep a trained model).")
        shutil.rmtree(pipeline)
    remove_vae_outputs(config)
    remove_guide_outputs(config)
    remove_controlnet_outputs(config)
    for name in OUTPUT_FILES:
        if (out / name).is_file():
            (out / name).unlink()
    return None
