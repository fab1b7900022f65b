"""Step 4 of the demo: the trained model's bits/dim on held-out digits, by the probability-flow ODE and by the bound.

Both through ``scratch_diffusion.likelihood``'s command-line functions (``python -m scratch_diffusion.likelihood``
runs the same code on any saved pipeline), unconditional (the null class), on the first ``num_images`` held-out
digits. Sized for the demo's budget: Heun with Hutchinson's estimator (one Rademacher probe) for the ODE, a
stratified importance-weighted subset of the DDPM chain's KL terms for the bound. A flow model has no bound of
its own: it is bounded on the DDPM chain through the path change (the bound of the DDPM sampler run with this
UNet, a different generative model from the ODE's, so the two numbers need not agree).
"""

from __future__ import annotations

from scratch_diffusion.likelihood.cli import build_parser, evaluate_bound, evaluate_ode, load_data

# (num_steps of Heun, bound terms): full run, --quick
SETTINGS = {"full": (50, 100), "quick": (2, 4)}


def likelihood_argv(pipeline_dir: str, num_images: int, seed: int, quick: bool) -> list[str]:
    """The ``python -m scratch_diffusion.likelihood`` command line of the demo's measurement."""
    num_steps, bound_terms = SETTINGS["quick" if quick else "full"]
    return [
        pipeline_dir, "--method", "both", "--num_images", str(num_images), "--solver", "heun",
        "--num_steps", str(num_steps), "--divergence", "hutchinson", "--num_probes", "1",
        "--bound_terms", str(bound_terms), "--labels", "null", "--seed", str(seed),
    ]  # fmt: skip


def measure_likelihood(pipe, pipeline_dir: str, num_images: int, seed: int, quick: bool) -> dict:
    """``{"ode": …, "bound": …, "command": …}``: bits/dim ± standard error over images, settings, seconds."""
    argv = likelihood_argv(pipeline_dir, num_images, seed, quick)
    args = build_parser().parse_args(argv)
    images, _, data_name = load_data(args.data, int(pipe.unet.config.sample_size), args.num_images)
    pipe.unet.eval().requires_grad_(False)  # the ODE's divergence differentiates the input only
    ode, bound = evaluate_ode(pipe, images, None, args), evaluate_bound(pipe, images, None, args)
    command = "python -m scratch_diffusion.likelihood " + " ".join(argv)
    return {"data": data_name, "ode": ode, "bound": bound, "command": command}


def likelihood_text(record: dict) -> str:
    """One line per method for the printed summary."""
    ode, bound = record["ode"], record["bound"]
    via = " on the DDPM chain (path change)" if bound.get("via_path_change") else ""
    return (
        f"ODE (Heun {ode['num_steps']} steps, Hutchinson) {ode['bits_per_dim']:.3f} ± {ode['stderr']:.3f}; "
        f"bound{via}, {bound['num_terms']} terms {bound['bits_per_dim']:.3f} ± {bound['stderr']:.3f} "
        f"bits/dim (n={ode['num_images']} held-out digits, {ode['seconds'] + bound['seconds']:.0f} s)"
    )
