"""Fixtures of the training tests: tiny data, a tiny UNet config, and ways to run train.py.

Everything is offline and on CPU with one torch thread (a shared 2-core runner; and runs that are
compared bit for bit must use the same thread count). ``HF_HOME`` points into the test's temporary
folder, so no cached token, accelerate config or dataset cache of the machine is used.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scratch_diffusion.demo.config import QUICK_UNET

REPO = Path(__file__).resolve().parents[2]
TRAIN_PY = REPO / "training" / "train.py"
FAKE_TOKEN = "hf_FakeScratchDiffusionToken0123456789abcd"

# A UNet2DModel small enough for ~20 ms steps at 16×16 on one CPU thread (two levels, no attention): the
# demo's --quick toy UNet, one definition for both.
TINY_UNET = QUICK_UNET


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """An empty HF_HOME, offline mode on, and no token from the environment."""
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    return home


@pytest.fixture
def fresh_accelerate_state():
    """For tests that build an ``Accelerator`` themselves (trainer runs need nothing: ``make_accelerator`` resets)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def tiny_unet_json(tmp_path) -> Path:
    path = tmp_path / "tiny_unet.json"
    path.write_text(json.dumps(TINY_UNET))
    return path


def write_imagefolder(root: Path, per_class: int = 5, size=(20, 16)) -> Path:
    """Two class subfolders of small images in mixed modes (RGB, L, P, RGBA), not square."""
    rng = np.random.default_rng(0)
    modes = ["RGB", "L", "P", "RGBA"]
    for c, name in enumerate(("circle", "square")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            pixels[..., c] //= 4  # a class-dependent colour cast
            image = Image.fromarray(pixels, "RGB")
            mode = modes[(i + c) % len(modes)]
            image = image.convert(mode) if mode != "P" else image.quantize(16)
            image.save(folder / f"{name}_{i}.png")
    return root


@pytest.fixture
def imagefolder(tmp_path) -> Path:
    return write_imagefolder(tmp_path / "images")


def subprocess_env(hf_home: Path) -> dict:
    env = dict(os.environ)
    env.update(
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        ACCELERATE_USE_CPU="1",  # CPU even where a GPU is visible: runs are compared bit for bit
    )
    env.pop("HF_TOKEN", None)
    return env


def train_command(*args: str) -> list[str]:
    return [sys.executable, str(TRAIN_PY), *map(str, args)]


def launch_command(num_processes: int, *args: str) -> list[str]:
    """``accelerate launch`` of ``num_processes`` CPU processes joined by gloo.

    accelerate 1.15's ``--cpu`` launcher starts a single process unless mpirun is set up
    (``--mpirun_hostfile``); the torchrun launcher (``--multi_gpu``) starts them, and
    ``ACCELERATE_USE_CPU=1`` (set by :func:`subprocess_env`) makes them a multi-CPU group.
    """
    with socket.socket() as s:  # a free port for the process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        str(TRAIN_PY), *map(str, args),
    ]  # fmt: skip


def run(command: list[str], hf_home: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``command`` from the repository root; fail the test with its output if it fails."""
    result = subprocess.run(
        command, cwd=REPO, env=subprocess_env(hf_home), capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        pytest.fail(f"{command[2:]} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="session")
def classifier_cache(tmp_path_factory) -> Path:
    """``$SCRATCH_DIFFUSION_CACHE`` for runs with ``--eval_steps`` (in-process and subprocesses alike).

    Under pytest-xdist one folder serves all workers of the session (the cache is written atomically),
    so the digits CNN is trained at most once per worker and usually once in all.
    """
    from scratch_diffusion.metrics import CACHE_ENV_VAR, load_digits_classifier

    base = tmp_path_factory.getbasetemp()
    directory = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "training-classifier-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV_VAR, str(directory))
        load_digits_classifier()
        yield directory
