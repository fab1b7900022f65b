"""``python -m scratch_diffusion.demo``: the command line, resolved into a :class:`DemoConfig` and run."""

from __future__ import annotations

import argparse
import os
import sys

from scratch_diffusion.demo.config import DEFAULTS, SPACES, DemoError, resolve_config, use_quick_unet
from scratch_diffusion.demo.phases import run
from scratch_diffusion.training.models import PRESETS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scratch_diffusion.demo",
        description="Train a class-conditional diffusion model on the built-in digits, sample it with every "
        "sampler at several step counts, and measure quality offline (metrics.json, metrics.md, demo.png).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--output_dir", default="outputs/demo", help="where everything is written")
    p.add_argument("--reuse", action="store_true", help="keep the pipeline trained by an earlier run: skip training")
    p.add_argument("--quick", action="store_true", help="a seconds-long run with a toy UNet (for tests)")
    p.add_argument("--seed", type=int, default=0, help="training, sampling and baseline seed")
    p.add_argument("--num_threads", type=int, default=2, help="torch CPU threads (0: leave torch's default)")
    p.add_argument("--device", default=None, help="sampling device; default cuda if available, else cpu")

    train = p.add_argument_group("training (ignored with --reuse)")
    train.add_argument(
        "--space",
        choices=SPACES,
        default=None,
        help="diffuse in a tiny VAE's latent space (the VAE is trained first) or on the pixels; "
        f"default {DEFAULTS['space']}",
    )
    train.add_argument(
        "--vae_steps", type=int, default=None, help=f"VAE training steps (latent only); default {DEFAULTS['vae_steps']}"
    )
    train.add_argument("--objective", choices=("flow", "ddpm"), default=None, help=f"default {DEFAULTS['objective']}")
    train.add_argument(
        "--prediction_type", choices=("epsilon", "v_prediction"), default=None, help="ddpm only; default epsilon"
    )
    train.add_argument(
        "--logit_mean",
        type=float,
        default=None,
        help="flow only: mean of logit(σ) in training (< 0: more training at low noise); "
        f"default {DEFAULTS['logit_mean']}",
    )
    train.add_argument(
        "--model",
        default=None,
        help=f"UNet preset ({', '.join(PRESETS)}) or JSON config; default {DEFAULTS['model']}",
    )
    length = train.add_mutually_exclusive_group()
    length.add_argument(
        "--max_train_steps", type=int, default=None, help=f"training steps; default {DEFAULTS['max_train_steps']}"
    )
    length.add_argument(
        "--train_minutes",
        type=float,
        default=None,
        help="train for about this many minutes instead: the step count is calibrated on this machine first",
    )
    train.add_argument("--train_batch_size", type=int, default=None, help=f"default {DEFAULTS['train_batch_size']}")
    train.add_argument("--learning_rate", type=float, default=None, help=f"default {DEFAULTS['learning_rate']}")
    train.add_argument("--lr_warmup_steps", type=int, default=None, help=f"default {DEFAULTS['lr_warmup_steps']}")
    train.add_argument(
        "--class_dropout_prob", type=float, default=None, help=f"default {DEFAULTS['class_dropout_prob']}"
    )
    train.add_argument(
        "--digits_split",
        choices=("train", "all"),
        default=None,
        help="train on the metric's 70 %% training split (its FD reference stays unseen) or on all 1,797 digits; "
        f"default {DEFAULTS['digits_split']}",
    )
    train.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True, help="EMA weights")

    sample = p.add_argument_group("sampling and evaluation")
    sample.add_argument(
        "--step_counts",
        type=int,
        nargs="+",
        default=None,
        help=f"default {' '.join(map(str, DEFAULTS['step_counts']))}",
    )
    sample.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help=f"classifier-free guidance; default {DEFAULTS['guidance_scale']}",
    )
    sample.add_argument(
        "--guidance_sweep",
        type=float,
        nargs="*",
        default=None,
        help="guidance scales scored at the sweep's best sampler/steps; default "
        + " ".join(map(str, DEFAULTS["guidance_sweep"])),
    )
    sample.add_argument(
        "--num_sweep_samples",
        type=int,
        default=None,
        help=f"images per sampler × steps in the sweep; default {DEFAULTS['num_sweep_samples']}",
    )
    sample.add_argument(
        "--num_eval_samples",
        type=int,
        default=None,
        help=f"images per setting in the final stage (reported numbers); default {DEFAULTS['num_eval_samples']}",
    )
    sample.add_argument(
        "--num_final", type=int, default=None, help=f"best sweep settings re-scored; default {DEFAULTS['num_final']}"
    )
    sample.add_argument(
        "--eval_draws",
        type=int,
        default=None,
        help="independent draws of --num_eval_samples per final setting, their FD averaged (spread reported); "
        f"default {DEFAULTS['eval_draws']}",
    )
    sample.add_argument(
        "--likelihood_images",
        type=int,
        default=None,
        help="held-out digits whose bits/dim (ODE and bound) are measured, 0: skip; "
        f"default {DEFAULTS['likelihood_images']}",
    )
    sample.add_argument("--sample_batch_size", type=int, default=250, help="images per pipeline call")

    rules = p.add_argument_group(
        "guidance stage: an autoguidance guide, then CFG, interval CFG and autoguidance at equal model evaluations"
    )
    rules.add_argument(
        "--guide_model",
        default=None,
        help="the guide UNet: a trainer preset (micro, tiny, compact, …) or a JSON config; "
        f"default {DEFAULTS['guide_model']} (--quick: the main model's)",
    )
    rules.add_argument("--guide_steps", type=int, default=None, help=f"default {DEFAULTS['guide_steps']}")
    rules.add_argument(
        "--guidance_interval",
        type=float,
        nargs=2,
        default=None,
        metavar=("SIGMA_LO", "SIGMA_HI"),
        help="interval CFG guides for noise levels σ = b/a in (SIGMA_LO, SIGMA_HI]; default "
        + " ".join(map(str, DEFAULTS["guidance_interval"])),
    )
    rules.add_argument(
        "--cfg_scales",
        type=float,
        nargs="+",
        default=None,
        help="w of full-range and interval CFG; default " + " ".join(map(str, DEFAULTS["cfg_scales"])),
    )
    rules.add_argument(
        "--autoguidance_scales",
        type=float,
        nargs="+",
        default=None,
        help="w of autoguidance; default " + " ".join(map(str, DEFAULTS["autoguidance_scales"])),
    )
    rules.add_argument(
        "--num_rule_samples",
        type=int,
        default=None,
        help=f"images per guidance-stage setting, 0: no guidance stage; default {DEFAULTS['num_rule_samples']}",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the demo; exit status 0, or 2 with a one-line ``demo: error:`` on stderr for a bad command line."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        config = resolve_config(args)
        if config.quick and args.model is None:
            use_quick_unet(config)
        run(config)
    except DemoError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    return 0
