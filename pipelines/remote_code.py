"""The saved format of :class:`ScratchDiffusionPipeline`: one folder that every diffusers loading path accepts.

diffusers 0.42 loads a pipeline class that is not part of diffusers only as remote code: a
``.py`` file shipped inside the saved folder, named by a list-valued ``_class_name`` in
``model_index.json``, and loaded with ``trust_remote_code=True``. A scheduler that is not part of
diffusers is likewise loadable from a Hub repo id only as a "custom component",
``<component>/<module>.py`` named by the component's entry (contract notes §3.4–3.5). So
:meth:`ScratchDiffusionPipeline.save_pretrained` writes::

    model_index.json          {"_class_name": ["scratch_diffusion", "ScratchDiffusionPipeline"],
                               "scheduler": ["scratch_diffusion", "ScratchDDIMScheduler"],
                               "unet": ["diffusers", "UNet2DModel"],
                               "prediction_type": "epsilon", "noise_path": "vp", ...}
    scratch_diffusion.py      this package's pipeline and scheduler code as one self-contained file
    scheduler/scratch_diffusion.py   the same file (only when the scheduler is one of ours)
    scheduler/scheduler_config.json, unet/...   as diffusers writes them
    vae/config.json, vae/diffusion_pytorch_model.safetensors   only a latent pipeline's, with an index entry
                                                               "vae": ["diffusers", "AutoencoderKL"]

The VAE is a diffusers class, so every loading story loads it with diffusers' own code (no custom
component); the shipped file carries the latent code (``latents.py``) with the pipeline. A pipeline
without a VAE writes no ``vae`` entry at all (not diffusers' ``[null, null]``), so its folder is the
same as before latent pipelines existed, and such older folders load with ``vae=None``.

The file is named after the package on purpose: with scratch-diffusion installed and imported,
the entry ``["scratch_diffusion", "ScratchDDIMScheduler"]`` also names the installed class, so
``ScratchDiffusionPipeline.from_pretrained`` loads the folder with the installed classes and never
runs the shipped file.

**Why one generated file rather than copies of the package's modules.** diffusers copies remote
code into a single flat namespace (``diffusers_modules.local``) shared by every local folder it
loads, and from a local folder it copies only the modules the loaded file imports *directly*
(``get_relative_imports``, not recursively), while ``samplers.py`` → ``noise_path.py`` chains are
the norm in ``scratch_schedulers``. A Hub download of the pipeline likewise fetches only the
root ``<module>.py``. A single file with no relative imports sidesteps all three. It is generated
by concatenating the modules the pipeline imports (transitively), in dependency order, with the
imports between them removed; generation fails loudly if two modules bind one top-level name to
different things, so the concatenation can never silently change behaviour.

A pipeline loaded *from* that file (stories B/C) re-saves by copying the file it runs from, so
save → load → save → load works with or without the package installed.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import os
import re
from pathlib import Path

# Stem of the shipped file, and the library name written into model_index.json for our classes.
BUNDLE_MODULE = "scratch_diffusion"
BUNDLE_FILE = BUNDLE_MODULE + ".py"
# The installed packages whose code the bundle contains, and the module the bundle is built from.
BUNDLED_PACKAGES = ("scratch_schedulers", "scratch_diffusion")
BUNDLE_ROOT_MODULE = "scratch_diffusion.pipelines.pipeline_scratch_diffusion"


def running_from_bundle() -> bool:
    """True when this code runs from a shipped ``scratch_diffusion.py`` (diffusers remote code)."""
    return not __name__.startswith("scratch_diffusion.")


def is_shipped_class(cls: type) -> bool:
    """Whether ``cls`` is a scratch-diffusion class: installed, or loaded from a shipped file."""
    module = cls.__module__
    if module.split(".")[0] in BUNDLED_PACKAGES:
        return True
    return module.startswith("diffusers_modules.") and module.split(".")[-1] == BUNDLE_MODULE


# --------------------------------------------------------------------------------------------
# model_index.json, written and read
# --------------------------------------------------------------------------------------------


def shipped_model_index(index: dict, pipeline_cls: type, components: dict[str, object]) -> dict:
    """The model_index.json to write: our classes point at the shipped file.

    Args:
        index: the dict diffusers would write (``_class_name`` is the bare class name and each
            component is ``[library, class]``, where a class of ours has a module path as library).
        pipeline_cls: the pipeline's class.
        components: the pipeline's components by name (``unet``, ``scheduler``).

    Returns:
        A new dict with ``_class_name = ["scratch_diffusion", <class>]`` when the pipeline class is
        ours, ``["scratch_diffusion", <class>]`` for every component of ours, and without
        ``_name_or_path`` (a local path that means nothing to whoever loads the folder) or the
        entries of absent optional components (``"vae": [null, null]``).
    """
    index = dict(index)
    index.pop("_name_or_path", None)
    for name in getattr(pipeline_cls, "_optional_components", []):
        if components.get(name) is None:
            index.pop(name, None)
    if is_shipped_class(pipeline_cls):
        index["_class_name"] = [BUNDLE_MODULE, pipeline_cls.__name__]
    for name, component in components.items():
        if component is not None and is_shipped_class(type(component)):
            index[name] = [BUNDLE_MODULE, type(component).__name__]
    return index


def installed_model_index(index: dict) -> dict:
    """model_index.json as the installed package reads it: ``_class_name`` as a plain class name.

    The list form only tells ``DiffusionPipeline.from_pretrained`` which shipped file holds the
    pipeline class; ``ScratchDiffusionPipeline.from_pretrained`` *is* that class, and reading the
    list would make diffusers load the shipped copy instead (and demand ``trust_remote_code``).
    """
    class_name = index.get("_class_name")
    if isinstance(class_name, (list, tuple)) and len(class_name) == 2 and class_name[0] == BUNDLE_MODULE:
        index = {**index, "_class_name": class_name[1]}
    return index


def write_shipped_code(save_directory: str | os.PathLike, pipeline_cls: type, components: dict) -> None:
    """Write ``scratch_diffusion.py`` at the root and into the folder of every component of ours.

    A ``scratch_diffusion.py`` left in a component folder by an earlier save is removed when that
    component is no longer ours (e.g. after swapping in a diffusers scheduler).
    """
    root = Path(save_directory)
    root.mkdir(parents=True, exist_ok=True)
    source = shipped_source()
    defined = set(re.findall(r"^class (\w+)", source, flags=re.MULTILINE))
    ours = [type(c) for c in components.values() if c is not None and is_shipped_class(type(c))]
    missing = sorted({cls.__name__ for cls in ours} - defined)
    if missing:  # the folder would name classes that neither story A nor B could load
        raise ValueError(
            f"{missing} are scratch-diffusion classes the shipped {BUNDLE_FILE} does not contain; "
            "add them to SHIPPED_SCHEDULERS in saved_format.py so they are bundled."
        )
    if is_shipped_class(pipeline_cls):
        (root / BUNDLE_FILE).write_text(source, encoding="utf-8")
    for name, component in components.items():
        target = root / name / BUNDLE_FILE
        if component is not None and is_shipped_class(type(component)):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source, encoding="utf-8")
        elif target.is_file():
            target.unlink()


# --------------------------------------------------------------------------------------------
# The shipped file
# --------------------------------------------------------------------------------------------


def shipped_source() -> str:
    """Source text of ``scratch_diffusion.py``: generated from the installed package, or this file."""
    if running_from_bundle():
        return Path(__file__).read_text(encoding="utf-8")
    return build_bundle()


def build_bundle(root_module: str = BUNDLE_ROOT_MODULE) -> str:
    """Concatenate ``root_module`` and the package modules it imports into one importable file.

    Raises:
        ValueError: if an import between bundled modules has a form that cannot be flattened
            (``import scratch_schedulers``, ``from . import x``), the imports form a cycle, or two
            modules bind the same top-level name to different definitions.
    """
    modules = _dependency_order(root_module)
    seen: dict[str, tuple[str, str]] = {}
    sections = []
    for qualname, path in modules:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        _check_bindings(tree, qualname, seen)
        sections.append(f"# {'=' * 92}\n# {qualname}\n# {'=' * 92}\n\n{_flatten(source, tree, qualname)}")
    try:
        version = importlib.metadata.version("scratch-diffusion")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    listing = "\n".join(f"    {q}" for q, _ in modules)
    header = (
        f'"""scratch-diffusion {version}: ScratchDiffusionPipeline and its schedulers in one file.\n\n'
        "Generated by ScratchDiffusionPipeline.save_pretrained; do not edit, re-save the pipeline instead.\n"
        "diffusers loads it as remote code (trust_remote_code=True) where the scratch-diffusion package\n"
        "is not used. Sections, in dependency order (imports between them removed):\n\n"
        f'{listing}\n"""\n\nfrom __future__ import annotations\n\n'
    )
    bundle = header + "\n\n".join(sections)
    compile(bundle, BUNDLE_FILE, "exec")  # a syntax error here is a bundler bug: fail at save time
    return bundle


def _module_path(qualname: str) -> Path:
    spec = importlib.util.find_spec(qualname)
    if spec is None or spec.origin is None:
        raise ValueError(f"cannot bundle {qualname}: module not found")
    return Path(spec.origin)


def _is_bundled(module: str | None) -> bool:
    return module is not None and module.split(".")[0] in BUNDLED_PACKAGES


def _imported_modules(tree: ast.Module, qualname: str) -> list[str]:
    """The bundled modules ``qualname`` imports, resolved to the modules that define the names."""
    package = qualname.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(_is_bundled(a.name) for a in node.names):
            raise ValueError(f"{qualname}: use 'from <module> import <name>' for bundled modules, not 'import'")
        if not isinstance(node, ast.ImportFrom) or not (node.level or _is_bundled(node.module)):
            continue
        if node.module is None:
            raise ValueError(f"{qualname}: 'from . import <module>' cannot be bundled; import names instead")
        target = importlib.util.resolve_name("." * node.level + node.module, package) if node.level else node.module
        if _module_path(target).name != "__init__.py":
            found.append(target)
            continue
        package_module = importlib.import_module(target)  # a package: find where each name is defined
        for alias in node.names:
            defined_in = getattr(getattr(package_module, alias.name), "__module__", None)
            if not _is_bundled(defined_in):
                raise ValueError(f"{qualname}: import {alias.name} from the module that defines it, not from {target}")
            found.append(defined_in)
    return found


def _dependency_order(root_module: str) -> list[tuple[str, Path]]:
    """Post-order walk of the import graph from ``root_module``: dependencies come first."""
    order: list[tuple[str, Path]] = []
    state: dict[str, str] = {}

    def visit(qualname: str) -> None:
        if state.get(qualname) == "done":
            return
        if state.get(qualname) == "active":
            raise ValueError(f"cannot bundle: import cycle through {qualname}")
        state[qualname] = "active"
        path = _module_path(qualname)
        for dependency in _imported_modules(ast.parse(path.read_text(encoding="utf-8")), qualname):
            visit(dependency)
        state[qualname] = "done"
        order.append((qualname, path))

    visit(root_module)
    return order


def _bindings(node: ast.stmt) -> list[tuple[str, str]]:
    """(name, what it is bound to) for each top-level name a statement binds, looking into if/try."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [(node.name, ast.dump(node))]
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)} - {"__all__"}
        return [(name, ast.dump(node)) for name in sorted(names)]
    if isinstance(node, ast.Import):
        # `import a.b` binds `a` to package a, like `import a`; `import a.b as c` binds c to a.b
        return [
            (a.asname, f"import {a.name}") if a.asname else (a.name.split(".")[0], f"import {a.name.split('.')[0]}")
            for a in node.names
        ]
    if isinstance(node, ast.ImportFrom):
        if node.level or _is_bundled(node.module) or node.module == "__future__":
            return []  # removed by _flatten: the name is the bundled definition itself
        return [(a.asname or a.name, f"from {node.module} import {a.name}") for a in node.names]
    children = [s for s in ast.iter_child_nodes(node) if isinstance(s, ast.stmt)]
    children += [s for handler in getattr(node, "handlers", []) for s in handler.body]
    return [binding for child in children for binding in _bindings(child)]


def _check_bindings(tree: ast.Module, qualname: str, seen: dict[str, tuple[str, str]]) -> None:
    """Record the top-level names of ``qualname``; raise if an earlier module bound one differently."""
    for statement in tree.body:
        for name, meaning in _bindings(statement):
            if name in seen and seen[name][1] != meaning:
                raise ValueError(
                    f"cannot bundle: top-level name {name!r} is bound differently in {seen[name][0]} "
                    f"and {qualname}; rename one of them"
                )
            seen[name] = (qualname, meaning)


def _flatten(source: str, tree: ast.Module, qualname: str) -> str:
    """``source`` without its future import, ``__all__`` and imports of other bundled modules.

    An import ``from .x import a as b`` becomes ``b = a``; an import inside a block becomes
    ``pass`` so the block stays valid.
    """
    lines = source.splitlines()
    replacements: list[tuple[int, int, list[str]]] = []
    for node in ast.walk(tree):
        drop = isinstance(node, ast.ImportFrom) and (
            node.level or _is_bundled(node.module) or node.module == "__future__"
        )
        drop = drop or (
            node in tree.body
            and isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
        )
        if not drop:
            continue
        indent = " " * node.col_offset
        aliases = [f"{indent}{a.asname} = {a.name}" for a in getattr(node, "names", []) if a.asname]
        if not aliases and node not in tree.body:
            aliases = [f"{indent}pass"]
        replacements.append((node.lineno - 1, node.end_lineno, aliases))
    for start, end, new in sorted(replacements, reverse=True):
        lines[start:end] = new
    return "\n".join(lines).strip("\n") + "\n"
