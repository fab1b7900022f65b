"""The demo behind ``make demo``: train on the built-in digits, sample with every sampler, measure.

    python -m scratch_diffusion.demo                      # ≈ 3 min training + a minute or two of sampling
    python -m scratch_diffusion.demo --space pixel        # the UNet on the pixels (≈ 5 min) + bits/dim
    python -m scratch_diffusion.demo --reuse              # keep the trained model, re-sample and re-measure
    python -m scratch_diffusion.demo --quick              # seconds: a toy UNet, for tests

Five steps, each with a progress bar:

1. **train** (latent space, the default) a tiny ``AutoencoderKL`` (f = 2, 1×8×8 latents) with
   ``scratch_diffusion.training.vae.run_vae_training``, then a small class-conditional ``UNet2DModel`` on its
   latents of scikit-learn's digits (16×16) with ``scratch_diffusion.training.run_training`` (``--space pixel``:
   on the pixels), both in this process (two torch threads by default);
2. the trainer **saves** the pipeline, its model card and tensorboard logs in ``<output_dir>/pipeline``;
3. **sample** with each sampler that reads the trained parametrisation (flow Euler and flow Heun
   for a flow model; DDPM and DDIM for a DDPM-family one) at several step counts, one requested
   class per image (drawn like the data's labels), and with classifier-free guidance at several scales; then
   train an autoguidance guide and compare CFG, interval CFG and autoguidance at equal model evaluations;
4. **evaluate** every sample set with :mod:`scratch_diffusion.metrics` (Fréchet distance in a digits
   classifier's feature space, beside the real-vs-real baseline at the same sample size) and write
   ``metrics.json``, ``metrics.md`` and the figure ``demo.png`` (grids: one row per class; quality
   against steps);
5. **print** where everything is, the best sampler beside the baseline, and how to load the pipeline.

Sampling cost is kept in check in four stages:

* ``sweep``: every sampler × step count at guidance ``--guidance_scale`` (default 1: the
  conditional model alone, one UNet evaluation per step), on ``--num_sweep_samples`` images;
* ``guidance``: the sweep's best sampler/steps at each scale of ``--guidance_sweep`` (w > 1 runs
  the conditional and null-class halves in one batch: two UNet evaluations per step, and counted so),
  same number of images;
* ``final``: the ``--num_final`` best sweep settings of at most ``MAX_NFE`` (10) model evaluations per image,
  again, on ``--eval_draws`` (3) independent draws of ``--num_eval_samples`` images (1000: the Fréchet distance
  is noisy below that, and one draw of 1000 still scatters by about ±0.2 in FD ratio), their FD averaged and its
  spread over draws reported. The reported "best" comes from this stage;
* ``guidance rules`` (issue 21): an autoguidance guide is trained (``--guide_model``, ``--guide_steps``,
  ``train.py --guide_for`` the pipeline), then the final best's sampler runs unguided, with full-range CFG,
  interval CFG (``--guidance_interval``) and autoguidance, all at the evaluations per image of CFG at the
  best's steps, each with the most steps that fit, on ``--num_rule_samples`` images;
* ``control and editing`` (issue 22, :mod:`~scratch_diffusion.demo.editing_stage`): held-out digits inpainted (left
  half) and edited image to image (noise σ = 0.5), and a ControlNet for the low-resolution control trained briefly
  and sampled, 200 images each (one draw: a small n; the study is ``benchmarks/bench_control.py``);
* ``few-step`` (issue 23, :mod:`~scratch_diffusion.demo.few_step_stage`): the pipeline consistency-tuned
  (``train.py --init_from`` it ``--objective consistency``, 300 steps, into ``<output_dir>/few-step``) and sampled with
  its own scheduler at 1, 2 and 4 evaluations per image beside the teacher's DPM-Solver++ at the same counts (the
  study with MeanFlow, 3 seeds and training from scratch is ``benchmarks/bench_few_step_models.py``).

Every evaluation count is the pipeline's own (``pipe.evaluations``, read after each call): a classifier-free
guidance step counts both halves, an autoguidance step one UNet and one guide evaluation.

Every Fréchet distance is printed beside the real-vs-real baseline at the same sample size.

Nothing is reused silently: without ``--reuse`` an earlier run's outputs in ``--output_dir`` are
replaced (the run says so); with ``--reuse`` the trained pipeline is kept and the run says which.
The digits classifier of the metric is cached across runs (``$SCRATCH_DIFFUSION_CACHE``); the run
says whether it was loaded or trained.

The documentation's demo table (docs/benchmarks.md) is printed from a run's ``metrics.json`` by
``python -m scratch_diffusion.demo.readme_table outputs/demo/metrics.json``.

Modules (the names below are re-exported here):

================  ===========================================================================
``config``        ``DEFAULTS``, ``QUICK``, :class:`DemoConfig` and its checks
``cli``           the command line and ``main``
``outputs``       replacing an earlier run's outputs, or checking what ``--reuse`` keeps
``training``      steps 1-2: the VAE, then ``run_training``; ``--train_minutes`` calibration
``sampling``      step 3: :class:`SampleSet`, the samplers, sampling and scoring a stage
``rules``         the guidance rules as pipeline arguments (CFG, interval CFG, autoguidance, classifier)
``guide``         the autoguidance guide: its training (``--guide_for``) and its cost per evaluation
``equal_evaluations``  the guidance stage's settings at equal model evaluations per image
``guidance_study``  the models and interleaved sampling of ``benchmarks/bench_guidance.py``
``editing_stage``  the control and editing stage: inpainting, image-to-image, a ControlNet (issue 22)
``control_data``  held-out inputs, masks, corruptions and measures of the control and editing study
``control_study``  the models, settings and scoring of ``benchmarks/bench_control.py``
``control_report``  its tables and targets
``few_step_stage``  the few-step stage: consistency tuning of the demo's pipeline, scored at 1, 2, 4 evaluations
``few_step_study``  the models (teacher, tuned, from scratch, levers) and scoring of ``bench_few_step_models.py``
``few_step_report``  its tables and targets
``quality``       ``QUALITY_BAR`` and the verdict
``report``        ``metrics.md`` and the documentation's demo table, from ``metrics.json``'s content
``figure``        ``demo.png``
``likelihood``    bits/dim of a pixel-space model (ODE and bound)
``phases``        ``run``: one function per phase
``readme_table``  ``python -m scratch_diffusion.demo.readme_table metrics.json``
================  ===========================================================================
"""

from scratch_diffusion.demo.cli import build_parser, main
from scratch_diffusion.demo.config import (
    DEFAULTS,
    PIPELINE_SUBDIR,
    QUICK,
    QUICK_UNET,
    SAMPLERS,
    DemoConfig,
    DemoError,
    resolve_config,
)
from scratch_diffusion.demo.figure import GRID_COLUMNS, class_grid, save_figure
from scratch_diffusion.demo.outputs import OUTPUT_FILES, prepare_output_dir
from scratch_diffusion.demo.phases import load_command, run
from scratch_diffusion.demo.quality import QUALITY_BAR, bar_text, guided_text, quality_verdict
from scratch_diffusion.demo.report import metrics_markdown, readme_table, results_table, row_evaluations, rules_text
from scratch_diffusion.demo.rules import RULES, RULES_STAGE, guidance_arguments
from scratch_diffusion.demo.sampling import (
    SampleSet,
    combine_draws,
    draw_images,
    evaluations_per_image,
    make_scheduler,
    model_evaluations,
    pick_best,
    requested_labels,
    run_stage,
    score_set,
)
from scratch_diffusion.demo.training import calibrate_steps, train_model, training_argv

__all__ = [
    "DEFAULTS",
    "GRID_COLUMNS",
    "OUTPUT_FILES",
    "PIPELINE_SUBDIR",
    "QUALITY_BAR",
    "QUICK",
    "QUICK_UNET",
    "RULES",
    "RULES_STAGE",
    "SAMPLERS",
    "DemoConfig",
    "DemoError",
    "SampleSet",
    "bar_text",
    "build_parser",
    "calibrate_steps",
    "class_grid",
    "combine_draws",
    "draw_images",
    "evaluations_per_image",
    "guidance_arguments",
    "guided_text",
    "load_command",
    "main",
    "make_scheduler",
    "metrics_markdown",
    "model_evaluations",
    "pick_best",
    "prepare_output_dir",
    "quality_verdict",
    "readme_table",
    "requested_labels",
    "resolve_config",
    "results_table",
    "row_evaluations",
    "rules_text",
    "run",
    "run_stage",
    "save_figure",
    "score_set",
    "train_model",
    "training_argv",
]
