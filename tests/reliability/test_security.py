"""Security: no unpickling of user data, no remote code without consent, no token leaks, no path traversal.

* Weights are read and written as safetensors only; every call that resolves to ``torch.load``
  (through any import alias, or as ``torch.serialization.load``) passes ``weights_only=True``
  (checked on the source by :func:`test_package_source_never_unpickles_or_trusts_remote_code`).
* accelerate writes the training state's optimizer, LR scheduler, EMA, progress and RNG states as
  pickles and unpickles the registered objects with ``weights_only=False``; train.py loads every
  pickle of a checkpoint with ``weights_only=True`` first and refuses anything else.
* With the package installed, no load path runs the shipped ``scratch_diffusion.py`` (also:
  ``tests/pipelines/test_loading_stories.py::test_story_a_installed_package_needs_no_remote_code``).
* A Hub token given by flag, environment or login appears in no output, log, event file,
  checkpoint, config or model card.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import torch

from scratch_diffusion.training import checkpoints, hub
from scratch_diffusion.training.checkpoints import checkpoint_problem, save_checkpoint, write_manifest

from ..training.test_outputs import FakeHub
from .conftest import FAKE_TOKEN, error_lines, run_main, train_argv

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ("scratch_schedulers", "pipelines", "training", "scratch_diffusion")
UNPICKLERS = {"pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib", "_pickle"}


TORCH_LOADS = {"torch.load", "torch.serialization.load"}
TORCH_SAVES = {"torch.save", "torch.serialization.save"}
# Modules whose bare-name import of an (un)pickling function is refused outright.
IMPORT_REFUSED_FROM = {"torch", "torch.serialization"} | UNPICKLERS


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else keyword.value
    return None


def import_aliases(tree: ast.Module) -> dict[str, str]:
    """The dotted name each imported name of a module stands for, wherever in the module it is imported.

    ``import torch as T`` ⇒ ``T: torch``; ``import torch.serialization`` ⇒ ``torch: torch``;
    ``from torch import load as L`` ⇒ ``L: torch.load``. Relative imports are the package's own code.
    """
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def resolved_name(func: ast.expr, aliases: dict[str, str]) -> str | None:
    """The dotted name a called expression resolves to (``T.serialization.load`` ⇒ ``torch.serialization.load``)."""
    attributes = []
    while isinstance(func, ast.Attribute):
        attributes.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None  # a call on a call result or subscript: not a module function
    return ".".join([aliases.get(func.id, func.id), *reversed(attributes)])


def unsafe_calls(source: str, filename: str) -> list[str]:
    """Every place in ``source`` that could unpickle, run code, or load without safetensors.

    Calls are matched by what they resolve to through the module's imports, so an alias
    (``import torch as T``, ``from torch import load as L``) or ``torch.serialization.load`` is
    checked like ``torch.load``: it must pass ``weights_only=True`` as a literal keyword.
    """
    tree = ast.parse(source, filename)
    aliases = import_aliases(tree)
    problems = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and node.module in IMPORT_REFUSED_FROM:
            problems += [f"{where}: from {node.module} import {a.name}" for a in node.names
                         if a.name in {"load", "loads", "Unpickler", "save"}]  # fmt: skip
        if not isinstance(node, ast.Call):
            continue
        name = resolved_name(node.func, aliases)
        module, _, attr = (name or "").rpartition(".")
        if name in {"eval", "exec", "builtins.eval", "builtins.exec"}:
            problems.append(f"{where}: {attr}()")
        if name in TORCH_LOADS and _keyword(node, "weights_only") is not True:
            problems.append(f"{where}: {name} without weights_only=True")
        if name in TORCH_SAVES:
            problems.append(f"{where}: {name} writes a pickle")
        if module in UNPICKLERS and attr in {"load", "loads", "Unpickler", "open"}:
            problems.append(f"{where}: {name}")
        if name in {"numpy.load", "np.load"} and _keyword(node, "allow_pickle") is True:
            problems.append(f"{where}: np.load(allow_pickle=True)")
        if _keyword(node, "trust_remote_code") is True:
            problems.append(f"{where}: trust_remote_code=True")
        if _keyword(node, "safe_serialization") is False or _keyword(node, "use_safetensors") is False:
            problems.append(f"{where}: pickle serialization requested")
    return problems


def test_the_source_scan_finds_what_it_looks_for():
    bad = """
import pickle, torch, numpy as np
from torch import load
pickle.loads(b"")
torch.load("x")
torch.load("x", weights_only=False)
np.load("x", allow_pickle=True)
DiffusionPipeline.from_pretrained("x", trust_remote_code=True)
pipe.save_pretrained("x", safe_serialization=False)
exec("1")
"""
    assert len(unsafe_calls(bad, "bad.py")) == 8
    assert unsafe_calls("torch.load('x', weights_only=True)\nf(trust_remote_code=flag)", "ok.py") == []


@pytest.mark.parametrize(
    ("imports", "call"),
    [
        ("import torch as T", "T.load"),
        ("from torch import load as L", "L"),
        ("import torch", "torch.serialization.load"),
        ("import torch.serialization", "torch.serialization.load"),
        ("import torch.serialization as ts", "ts.load"),
        ("from torch import serialization", "serialization.load"),
        ("from torch import serialization as S", "S.load"),
        ("from torch.serialization import load as read", "read"),
    ],
)
def test_the_source_scan_resolves_aliases_of_torch_load(imports, call):
    """Inside a function, after an aliased import: each call is caught unless it passes a literal weights_only=True."""

    def torch_load_problems(weights_only: str) -> list[str]:
        source = f"def read_weights(path, options):\n    {imports}\n    return {call}(path{weights_only})\n"
        return [p for p in unsafe_calls(source, "aliased.py") if "without weights_only=True" in p]

    for unsafe in ("", ", weights_only=False", ", weights_only=options", ", **options"):
        (problem,) = torch_load_problems(unsafe)
        assert problem.startswith("aliased.py:3: torch.") and "load without weights_only=True" in problem
    assert torch_load_problems(", weights_only=True") == []


def test_the_source_scan_resolves_aliases_of_other_unpicklers():
    source = "import pickle as P\nimport torch as T\nfrom numpy import load as npl\n"
    source += "P.loads(b'')\nT.save({}, 'x')\nnpl('x', allow_pickle=True)\nT.nn.Linear(1, 1)\n"
    assert [p.split(": ", 1)[1] for p in unsafe_calls(source, "m.py")] == [
        "pickle.loads", "torch.save writes a pickle", "np.load(allow_pickle=True)"
    ]  # fmt: skip


def test_package_source_never_unpickles_or_trusts_remote_code():
    """The installed package's own code: torch.load only with weights_only=True, no pickle/eval/exec,
    no hard-coded trust_remote_code=True, no non-safetensors serialization."""
    files = sorted(p for d in PACKAGE_DIRS for p in (REPO / d).rglob("*.py"))
    assert len(files) > 15
    problems = [problem for path in files for problem in unsafe_calls(path.read_text(encoding="utf-8"), str(path))]
    assert problems == []


def test_weights_are_written_and_read_as_safetensors_only(saved_pipeline, tmp_path):
    """A saved pipeline holds safetensors weights only; a folder whose UNet has only a pickle (``.bin``)
    is refused by ``ScratchDiffusionPipeline.from_pretrained`` and ``load_pipeline``, unloaded."""
    from scratch_diffusion import ScratchDiffusionPipeline
    from scratch_diffusion.pipelines import SavedPipelineError, load_pipeline

    assert sorted(p.name for p in (saved_pipeline / "unet").iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors"
    ]  # fmt: skip
    folder = tmp_path / "pickled"
    shutil.copytree(saved_pipeline, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(weights), folder / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    for load in (ScratchDiffusionPipeline.from_pretrained, load_pipeline):
        with pytest.raises(SavedPipelineError, match=r"only pickle-based weights \['diffusion_pytorch_model.bin'\]"):
            load(folder)


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: the shape of any code-execution payload."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["custom_checkpoint_2.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_a_planted_pickle_in_a_checkpoint_is_never_unpickled(
    name, tmp_path, tiny_unet_json, hf_home, fresh_accelerate_state, capfd
):
    """A checkpoint file replaced by a pickle that runs code (manifest rewritten to match, as an
    attacker could): resuming — ``latest`` or the explicit path — exits 2 naming the file, and the
    payload never runs. (Loaded with ``weights_only=False``, as accelerate loads custom objects, it would.)"""
    out = tmp_path / "run"
    assert run_main(train_argv(out, tiny_unet_json, steps=2, every=2)) == 0
    probe, marker = tmp_path / "probe", tmp_path / "pwned"
    torch.save(_Payload(probe), tmp_path / "payload.pkl")
    torch.load(tmp_path / "payload.pkl", weights_only=False)
    assert probe.exists(), "the payload is real: unpickled without weights_only it runs"

    checkpoint = out / "checkpoint-2"
    torch.save(_Payload(marker), checkpoint / name)
    write_manifest(str(checkpoint))
    assert checkpoint_problem(str(checkpoint)) is None
    capfd.readouterr()
    for resume in ("latest", str(checkpoint)):
        assert run_main(train_argv(out, tiny_unet_json, "--resume_from_checkpoint", resume, steps=3, every=3)) == 2
        (line,) = error_lines(capfd.readouterr().err)
        assert f"{checkpoint / name} holds more than tensors and plain containers; refusing to unpickle it" in line
        assert not marker.exists()


def test_the_shipped_code_never_runs_when_the_package_is_installed(saved_pipeline, tmp_path):
    """The shipped ``scratch_diffusion.py`` files are replaced by code that leaves a marker: loading with
    ``ScratchDiffusionPipeline.from_pretrained`` (story A) or ``load_pipeline`` never runs them."""
    from scratch_diffusion import ScratchDiffusionPipeline
    from scratch_diffusion.pipelines import load_pipeline

    folder, marker = tmp_path / "tampered", tmp_path / "ran"
    shutil.copytree(saved_pipeline, folder)
    for shipped in (folder / "scratch_diffusion.py", folder / "scheduler" / "scratch_diffusion.py"):
        shipped.write_text(f"open({str(marker)!r}, 'w')\n" + shipped.read_text())
    for load in (ScratchDiffusionPipeline.from_pretrained, load_pipeline):
        pipe = load(folder)
        assert type(pipe) is ScratchDiffusionPipeline and type(pipe.scheduler).__module__.startswith("scratch_")
    assert not marker.exists()


def test_a_model_index_naming_another_module_imports_nothing(saved_pipeline, tmp_path):
    """``"unet": ["this", "s"]`` in model_index.json: refused (by diffusers 0.42) without importing ``this``."""
    import json
    import sys

    from scratch_diffusion import ScratchDiffusionPipeline

    folder = tmp_path / "other-module"
    shutil.copytree(saved_pipeline, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["this", "s"]
    (folder / "model_index.json").write_text(json.dumps(index))
    sys.modules.pop("this", None)
    with pytest.raises(ValueError, match="not one of the libraries Diffusers can load components from"):
        ScratchDiffusionPipeline.from_pretrained(folder)
    assert "this" not in sys.modules


# ---- tokens -------------------------------------------------------------------------------------------


def _assert_token_nowhere(root: Path, *texts: str) -> int:
    for text in texts:
        assert FAKE_TOKEN not in text
    files = [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        assert FAKE_TOKEN.encode() not in path.read_bytes(), f"the token leaked into {path}"
    return len(files)


@pytest.mark.parametrize("source", ["flag", "environment", "login"])
def test_a_token_never_reaches_any_output(
    source, tmp_path, tiny_unet_json, hf_home, fresh_accelerate_state, monkeypatch, capfd, caplog
):
    """Token by --hub_token, HF_TOKEN or ``hf auth login``: a run whose upload fails (exit 1) and the
    push command that finishes it. stdout, stderr, the logs, and every file written — checkpoints,
    tensorboard events and hparams, configs, model card — are searched for the token."""
    from huggingface_hub import get_token

    flag = []
    if source == "flag":
        flag = ["--hub_token", FAKE_TOKEN]
    elif source == "environment":
        monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    else:
        import huggingface_hub.constants

        (hf_home / "token").write_text(FAKE_TOKEN)  # where `hf auth login` stores it (HF_HOME/token) ...
        monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(hf_home / "token"))  # ... read at import
    if source != "flag":
        assert get_token() == FAKE_TOKEN
    FakeHub(monkeypatch, fail="upload_folder")
    out = tmp_path / "out"
    argv = train_argv(out, tiny_unet_json, "--push_to_hub", "--hub_model_id", "me/secret", *flag, steps=2, every=1)
    assert run_main(argv) == 1
    FakeHub(monkeypatch)
    assert hub.main(["push", "--output_dir", str(out), "--hub_model_id", "me/secret", *flag]) == 0
    captured = capfd.readouterr()
    assert {"checkpoint-1", "checkpoint-2", "logs", "README.md"} <= {p.name for p in out.iterdir()}
    assert _assert_token_nowhere(out, captured.out, captured.err, caplog.text) > 20


# ---- paths -------------------------------------------------------------------------------------------


def test_checkpoint_rotation_never_follows_a_symlink_out_of_the_output_folder(tmp_path, fresh_accelerate_state):
    """``checkpoint-1`` and ``checkpoint-9.tmp`` planted as symlinks to folders outside: rotation and
    the clean-up of half-written folders remove the links, never what they point to."""
    from accelerate import Accelerator

    out, outside = tmp_path / "out", tmp_path / "precious"
    out.mkdir()
    outside.mkdir()
    (outside / "data.txt").write_text("keep me")
    (out / "checkpoint-1").symlink_to(outside, target_is_directory=True)
    (out / "checkpoint-9.tmp").symlink_to(outside, target_is_directory=True)
    checkpoints.remove_partial_checkpoints(str(out))
    assert not (out / "checkpoint-9.tmp").exists()
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(1, 1))
    for step in (2, 3):
        save_checkpoint(accelerator, str(out), step, total_limit=1)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-3"]
    assert (outside / "data.txt").read_text() == "keep me"


def test_a_manifest_cannot_point_outside_its_checkpoint(tmp_path):
    """A manifest naming ``../`` paths makes the checkpoint invalid rather than checking files elsewhere."""
    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    (folder / checkpoints.MANIFEST).write_text('{"format": 1, "files": {"../../etc/passwd": 1}}')
    assert "unreadable" in checkpoint_problem(str(folder)) and "leaves the folder" in checkpoint_problem(str(folder))


def test_a_hostile_folder_name_cannot_inject_code_into_the_model_card_snippet():
    """The card's usage snippet embeds the model id as an escaped literal: a folder named
    ``x"); import os; os.system("...`` stays a string."""
    from scratch_diffusion.training.cli import parse_args
    from scratch_diffusion.training.model_card import build_model_card

    hostile = 'x"); import os; os.system("echo pwned'
    card = build_model_card(
        parse_args([]), model_id=hostile, data_description="digits", hub_dataset_id=None, num_classes=None,
        num_parameters=1000, hyperparameters={},
    )  # fmt: skip
    snippet = card.content.split("```python\n")[1].split("```")[0]
    calls = [n for n in ast.walk(ast.parse(snippet)) if isinstance(n, ast.Call)]
    loads = [c for c in calls if isinstance(c.func, ast.Attribute) and c.func.attr == "from_pretrained"]
    assert len(loads) == 1 and isinstance(loads[0].args[0], ast.Constant) and loads[0].args[0].value == hostile
    imported = {a.name for n in ast.walk(ast.parse(snippet)) if isinstance(n, ast.Import) for a in n.names}
    assert imported == {"torch"}
