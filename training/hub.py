"""Pushing the output folder to the Hugging Face Hub with ``HfApi.create_repo`` + ``upload_folder``.

The repo is created (or found) before training, so a bad token or repo id fails in seconds, not
after hours; the folder is uploaded once the local output is complete. Errors are re-raised as
:class:`HubError` with the token scrubbed from the message.

If the upload fails (network, Hub outage, interrupted process), the local output stays complete
and the push alone is re-run with::

    python -m scratch_diffusion.training.hub push --output_dir ddpm-digits --hub_model_id your-name/ddpm-digits

It checks that the folder is a finished training output, creates the repo if needed and uploads
the folder without checkpoints, exactly as ``train.py --push_to_hub`` (or ``train_vae.py``'s) does at
the end of a run.
``upload_folder`` makes one commit, so a push that dies midway leaves the repo as it was; a
re-run uploads again (files already on the Hub are deduplicated by content).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys

from huggingface_hub import HfApi

from scratch_diffusion.pipelines.components import COMPONENTS, listed_components

logger = logging.getLogger(__name__)
# Never uploaded: training state (large, and specific to this machine) and half-written files.
IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "*.tmp", "*.tmp/**"]
# What a finished run leaves in --output_dir (README.md, the model card, is written last).
REQUIRED_OUTPUTS = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "README.md",
)
# An optional component's files, needed where model_index.json lists it (a latent run's vae/: LATENT_OUTPUTS).
LATENT_OUTPUTS = tuple(f"vae/{name}" for name in COMPONENTS["vae"].files)
# What a finished train_vae.py run leaves: one model (AutoencoderKL.from_pretrained loads it) at the root.
MODEL_OUTPUTS = ("config.json", "diffusion_pytorch_model.safetensors", "README.md")


class HubError(RuntimeError):
    """Creating the repo or uploading the folder failed."""


def _scrub(message: str, token: str | None) -> str:
    return message.replace(token, "<token>") if token else message


def repo_id_problem(repo_id: str) -> str | None:
    """What is wrong with ``--hub_model_id`` ``repo_id`` as a Hub repo id (huggingface_hub's rules), or None."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except ValueError as err:
        return f"--hub_model_id {repo_id!r} is not a Hub repo id ({err}); pass 'name' or 'your-name/name'."
    return None


def push_command(folder: str, repo_id: str) -> str:
    """The shell command that re-runs the push of ``folder`` to ``repo_id`` (token from env or login)."""
    return (
        f"python -m scratch_diffusion.training.hub push --output_dir {shlex.quote(folder)} "
        f"--hub_model_id {shlex.quote(repo_id)}"
    )


def create_repo(repo_id: str, token: str | None, private: bool) -> str:
    """Create the model repo if needed; returns its full id (``owner/name``)."""
    try:
        return HfApi(token=token).create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
    except Exception as err:  # any failure here means "cannot push"
        raise HubError(
            f"could not create or access the Hub repo {repo_id!r}: {type(err).__name__}: {_scrub(str(err), token)}"
        ) from None


def create_repo_before_training(accelerator, args) -> str | None:
    """With ``--push_to_hub``, create (or find) the repo on the main process; None without it.

    Called on every process before training: the outcome is broadcast, so a failure raises
    :class:`HubError` on every process alike and they all stop together.
    """
    from accelerate.utils import broadcast_object_list  # imported here: the push command needs no accelerate

    repo_id, hub_error = None, None
    if args.push_to_hub and accelerator.is_main_process:
        try:
            repo_id = create_repo(args.hub_model_id, args.hub_token, args.hub_private_repo)
        except HubError as err:
            hub_error = str(err)
    repo_id, hub_error = broadcast_object_list([repo_id, hub_error])
    if hub_error is not None:
        raise HubError(hub_error)
    return repo_id


def upload_output(folder: str, repo_id: str, token: str | None, commit_message: str) -> str:
    """Upload ``folder`` (without checkpoints) to ``repo_id``; returns the commit URL."""
    try:
        info = HfApi(token=token).upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message=commit_message,
            ignore_patterns=IGNORE_PATTERNS,
        )
    except Exception as err:
        raise HubError(
            f"uploading {folder!r} to the Hub repo {repo_id!r} failed: {type(err).__name__}: "
            f"{_scrub(str(err), token)}. The local output is complete; push it again with "
            f"`{push_command(folder, repo_id)}` (the token comes from --hub_token, HF_TOKEN or `hf auth login`)."
        ) from None
    return getattr(info, "commit_url", str(info))


def push_after_training(accelerator, args, repo_id: str | None, commit_message: str) -> None:
    """A trainer's last step: with the repo of :func:`create_repo_before_training` (``--push_to_hub``), upload
    ``--output_dir``, complete by now, from the main process and log the commit's URL; without one, nothing.

    Raises :class:`HubError` if the upload fails (the local output stays complete; the message says how to re-push).
    """
    if repo_id is None or not accelerator.is_main_process:
        return
    url = upload_output(args.output_dir, repo_id, args.hub_token, commit_message)
    logger.info(f"Pushed {args.output_dir} to {url}")


def is_model_output(folder: str) -> bool:
    """Whether ``folder`` is (or is becoming) a single-model output, such as ``train_vae.py``'s, not a pipeline."""
    exists = os.path.isfile
    return not exists(os.path.join(folder, "model_index.json")) and exists(os.path.join(folder, "config.json"))


def missing_outputs(folder: str) -> list[str]:
    """The files of a finished training output that ``folder`` lacks (empty if it is complete).

    A pipeline (``train.py``) needs :data:`REQUIRED_OUTPUTS`, and the files of every optional component its
    ``model_index.json`` lists (``pipelines/components.py``; a latent run's ``vae/``) too; a single model at
    the root (``train_vae.py``: a ``config.json`` and no ``model_index.json``) needs :data:`MODEL_OUTPUTS`.
    """
    if is_model_output(folder):
        return [name for name in MODEL_OUTPUTS if not os.path.isfile(os.path.join(folder, name))]
    required = list(REQUIRED_OUTPUTS)
    try:
        with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError):
        index = {}
    listed = listed_components(index) if isinstance(index, dict) else []
    required += [f"{c.name}/{name}" for c in listed if c.optional for name in c.files]
    return [name for name in required if not os.path.isfile(os.path.join(folder, *name.split("/")))]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scratch_diffusion.training.hub",
        description="Push a finished train.py or train_vae.py output folder to the Hugging Face Hub (checkpoints "
        "excluded).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push", help="create the repo if needed and upload --output_dir")
    push.add_argument("--output_dir", required=True, help="the --output_dir of a finished train.py / train_vae.py run")
    push.add_argument("--hub_model_id", required=True, help="repo id, 'name' or 'user/name'")
    push.add_argument("--hub_token", help="token (default: HF_TOKEN or the logged-in token); never printed")
    push.add_argument("--hub_private_repo", action="store_true", help="create the repo private (if it is new)")
    push.add_argument(
        "--commit_message", help="the Hub commit message; unset: 'Upload the trained pipeline' (or 'model')"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``push``: 0 pushed; 2 bad input (not a finished output folder, bad repo id, no token); 1 the Hub failed."""
    args = build_parser().parse_args(argv)
    prog = "scratch_diffusion.training.hub"
    from huggingface_hub import get_token

    problem = repo_id_problem(args.hub_model_id)
    if problem is not None:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        return 2
    if not os.path.isdir(args.output_dir):
        print(f"{prog}: error: --output_dir {args.output_dir!r} is not a folder.", file=sys.stderr)
        return 2
    missing = missing_outputs(args.output_dir)
    if missing:
        script = "train_vae.py" if is_model_output(args.output_dir) else "train.py"
        print(
            f"{prog}: error: --output_dir {args.output_dir!r} is not a finished training output (missing "
            f"{', '.join(missing)}); finish the run first ({script} ... --resume_from_checkpoint latest).",
            file=sys.stderr,
        )
        return 2
    if args.hub_token is None and get_token() is None:
        print(f"{prog}: error: no token: pass --hub_token, set HF_TOKEN, or run `hf auth login`.", file=sys.stderr)
        return 2
    try:
        repo_id = create_repo(args.hub_model_id, args.hub_token, args.hub_private_repo)
        kind = "model" if is_model_output(args.output_dir) else "pipeline"
        message = args.commit_message or f"Upload the trained {kind}"
        url = upload_output(args.output_dir, repo_id, args.hub_token, message)
    except HubError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    print(f"Pushed {args.output_dir} to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
