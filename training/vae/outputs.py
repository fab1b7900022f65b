"""What VAE training shows and leaves: evaluations and grids during training, and the final output folder.

The folder loads with ``AutoencoderKL.from_pretrained(output_dir)`` (``config.json`` with the measured
``scaling_factor``, ``diffusion_pytorch_model.safetensors``) and holds ``vae_metrics.json``,
``reconstructions.png`` ("real | reconstruction" pairs) and ``README.md``, the model card, written last.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import numpy as np
import torch
from accelerate.logging import get_logger

from .. import export
from ..evaluation import private_randomness
from ..optimization import ema_weights
from ..trainer import OutputWriteError
from . import card, metrics
from .presets import downsampling_factor

logger = get_logger(__name__)
METRICS_FILE = "vae_metrics.json"
GRID_FILE = "reconstructions.png"


class ReconstructionEvaluator:
    """PSNR / FD and reconstruction grids of the (EMA) VAE on the fixed evaluation images, on the main process.

    The other processes wait at a barrier; the time is kept apart from the training throughput (``seconds``).
    """

    def __init__(self, args, images: torch.Tensor, source: str, features):
        self.args, self.images, self.source, self.features = args, images, source, features
        self.history: list[dict] = []
        self.seconds = self.cpu_seconds = 0.0

    @contextlib.contextmanager
    def _ema_vae(self, accelerator, model, ema):
        start, cpu_start = time.perf_counter(), time.process_time()
        if accelerator.is_main_process:
            vae = accelerator.unwrap_model(model).vae
            vae.eval()
            with ema_weights(ema, vae), private_randomness(accelerator.device):
                yield vae
            vae.train()
        else:
            yield None
        accelerator.wait_for_everyone()
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.process_time() - cpu_start

    def log_grid(self, accelerator, model, ema, step: int) -> None:
        """Log ``--eval_batch_size`` "real | reconstruction" pairs to tensorboard."""
        if self.args.logger == "none":
            return
        with self._ema_vae(accelerator, model, ema) as vae:
            if vae is not None:
                pairs = metrics.reconstruction_pairs(vae, self.images[: self.args.eval_batch_size])
                grid = np.asarray(export.image_grid(pairs))
                tracker = accelerator.get_tracker("tensorboard", unwrap=True)
                grid = grid if grid.ndim == 3 else grid[..., None]
                tracker.add_image("reconstructions (real | reconstruction)", grid, step, dataformats="HWC")

    def __call__(self, accelerator, model, ema, step: int) -> None:
        """PSNR and FD (``metrics.evaluate_reconstructions``), logged as ``eval/…`` and kept in ``history``."""
        with self._ema_vae(accelerator, model, ema) as vae:
            if vae is not None:
                found = metrics.evaluate_reconstructions(vae, self.images, self.features, self.args.seed)
                self.history.append({"step": step, **found})
                accelerator.log({f"eval/{k}": found[k] for k in ("psnr", "fd", "fd_real_baseline")}, step=step)
                logger.info(f"Step {step}: {card.describe(found, self.source)}", main_process_only=True)


def save_outputs(args, vae, evaluator: ReconstructionEvaluator, train_set, data, step: int, repo_id, extra: dict):
    """Measure the latent scale of ``vae`` (the final weights), record it in its config and write the folder.

    Main process only, after the final evaluation. ``extra`` (parameter count, throughput) joins the
    metrics record. Raises :class:`OutputWriteError` if a file cannot be written.
    """
    vae.eval()
    with private_randomness(vae.device):
        scale = metrics.measure_latent_scale(vae, train_set, args.latent_scale_num_images, args.resolution, args.seed)
        pairs = metrics.reconstruction_pairs(vae, evaluator.images[: args.eval_batch_size])
    shift = {"shift_factor": scale["latent_mean"]} if args.measure_shift_factor else {}
    vae.register_to_config(scaling_factor=scale["scaling_factor"], **shift)
    factor = downsampling_factor(vae.config)
    side = args.resolution // factor
    record = {
        "step": step,
        "evaluated_on": evaluator.source,
        **{k: v for k, v in evaluator.history[-1].items() if k != "step"},
        "latent_scale": {**scale, "shift_factor": shift.get("shift_factor")},
        "image_channels": data.num_channels,
        "latent_shape": [vae.config.latent_channels, side, side],
        "downsampling_factor": factor,
        **extra,
        "history": evaluator.history,
    }
    try:
        vae.save_pretrained(args.output_dir)
        with open(os.path.join(args.output_dir, METRICS_FILE), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        export.image_grid(pairs).save(os.path.join(args.output_dir, GRID_FILE))
        model_id = repo_id or os.path.basename(os.path.normpath(args.output_dir))
        model_card = card.build_vae_card(args, record, model_id, data.description, data.hub_dataset_id, GRID_FILE)
        card.save_model_card(model_card, args.output_dir)  # written last: its presence marks a complete output
    except OSError as err:
        raise OutputWriteError(f"could not write the VAE to {args.output_dir!r}: {type(err).__name__}: {err}") from None
    logger.info(
        f"{card.describe(record, evaluator.source)}; scaling_factor {scale['scaling_factor']:.4f}. Saved the "
        f"AutoencoderKL, {METRICS_FILE}, {GRID_FILE} and README.md to {args.output_dir}",
        main_process_only=True,
    )
    return record
