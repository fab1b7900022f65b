"""Pushing the output folder to the Hugging Face Hub with ``HfApi.create_repo`` + ``upload_folder``.

The repo is created (or found) before training, so a bad token or repo id fails in seconds, not
after hours; the folder is uploaded once the local output is complete. Errors are re-raised as
:class:`HubError` with the token scrubbed from the message.
"""

from __future__ import annotations

from huggingface_hub import HfApi

# Never uploaded: training state (large, and specific to this machine) and half-written files.
IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "*.tmp", "*.tmp/**"]


class HubError(RuntimeError):
    """Creating the repo or uploading the folder failed."""


def _scrub(message: str, token: str | None) -> str:
    return message.replace(token, "<token>") if token else message


def create_repo(repo_id: str, token: str | None, private: bool) -> str:
    """Create the model repo if needed; returns its full id (``owner/name``)."""
    try:
        return HfApi(token=token).create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
    except Exception as err:  # any failure here means "cannot push"
        raise HubError(
            f"could not create or access the Hub repo {repo_id!r}: {type(err).__name__}: {_scrub(str(err), token)}"
        ) from None


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
            f"{_scrub(str(err), token)}. The local output is complete; retry with "
            f"`hf upload {repo_id} {folder} --exclude 'checkpoint-*'`."
        ) from None
    return getattr(info, "commit_url", str(info))
