"""Build step: generate the shipped ``scratch_diffusion.py`` from the package source.

Run after changing ``pipelines/`` or ``scratch_schedulers/``::

    python -m scratch_diffusion.pipelines.build_shipped          # rewrite pipelines/shipped-code/scratch_diffusion.py
    python -m scratch_diffusion.pipelines.build_shipped --check  # exit 1 if the committed file is stale

``tests/pipelines/test_remote_code.py`` fails while the committed file differs from what this
produces. ``save_pretrained`` only copies the file (``remote_code.write_shipped_code``); this module
is not imported by the pipeline, so none of its code is in the file it writes.

The file is every module the pipeline module imports (transitively, followed through the import
graph at build time, so a new module under ``pipelines/`` is included once the pipeline imports it),
concatenated in dependency order with the imports between them removed: diffusers copies remote
code into one flat namespace, copies only the direct relative imports of a local file, and downloads
only the root ``<name>.py`` of a Hub repo (``remote_code.py``). Flattening imposes three rules on the
bundled modules, each checked here with an error naming the module: import names with
``from <module> import <name>`` (not ``import scratch_schedulers`` or ``from . import module``), no
import cycles, and no top-level name bound to different things in two modules.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

from .remote_code import BUNDLE_FILE, BUNDLED_PACKAGES, shipped_file

# The module the bundle is built from: everything it imports, transitively, is bundled.
BUNDLE_ROOT_MODULE = "scratch_diffusion.pipelines.pipeline_scratch_diffusion"
BUILD_COMMAND = "python -m scratch_diffusion.pipelines.build_shipped"


def build_bundle(root_module: str = BUNDLE_ROOT_MODULE, packages: tuple[str, ...] = BUNDLED_PACKAGES) -> str:
    """Concatenate ``root_module`` and the modules of ``packages`` it imports into one importable file.

    Raises:
        ValueError: if an import between bundled modules has a form that cannot be flattened
            (``import scratch_schedulers``, ``from . import x``), the imports form a cycle, or two
            modules bind the same top-level name to different definitions.
    """
    modules = _dependency_order(root_module, packages)
    seen: dict[str, tuple[str, str]] = {}
    sections = []
    for qualname, path in modules:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        _check_bindings(tree, qualname, seen, packages)
        sections.append(f"# {'=' * 92}\n# {qualname}\n# {'=' * 92}\n\n{_flatten(source, tree, packages)}")
    try:
        version = importlib.metadata.version("scratch-diffusion")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    listing = "\n".join(f"    {q}" for q, _ in modules)
    header = (
        f'"""scratch-diffusion {version}: ScratchDiffusionPipeline and its schedulers in one file.\n\n'
        f"Generated from the package source by `{BUILD_COMMAND}`; do not edit.\n"
        "diffusers loads it as remote code (trust_remote_code=True) where the scratch-diffusion package\n"
        "is not used. Sections, in dependency order (imports between them removed):\n\n"
        f'{listing}\n"""\n\nfrom __future__ import annotations\n\n'
    )
    bundle = header + "\n\n".join(sections)
    compile(bundle, BUNDLE_FILE, "exec")  # a syntax error here is a bundler bug: fail at build time
    return bundle


def _module_path(qualname: str) -> Path:
    spec = importlib.util.find_spec(qualname)
    if spec is None or spec.origin is None:
        raise ValueError(f"cannot bundle {qualname}: module not found")
    return Path(spec.origin)


def _is_bundled(module: str | None, packages: tuple[str, ...]) -> bool:
    return module is not None and module.split(".")[0] in packages


def _imported_modules(tree: ast.Module, qualname: str, packages: tuple[str, ...]) -> list[str]:
    """The bundled modules ``qualname`` imports, resolved to the modules that define the names."""
    package = qualname.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(_is_bundled(a.name, packages) for a in node.names):
            raise ValueError(f"{qualname}: use 'from <module> import <name>' for bundled modules, not 'import'")
        if not isinstance(node, ast.ImportFrom) or not (node.level or _is_bundled(node.module, packages)):
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
            if not _is_bundled(defined_in, packages):
                raise ValueError(f"{qualname}: import {alias.name} from the module that defines it, not from {target}")
            found.append(defined_in)
    return found


def _dependency_order(root_module: str, packages: tuple[str, ...]) -> list[tuple[str, Path]]:
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
        for dependency in _imported_modules(ast.parse(path.read_text(encoding="utf-8")), qualname, packages):
            visit(dependency)
        state[qualname] = "done"
        order.append((qualname, path))

    visit(root_module)
    return order


def _bindings(node: ast.stmt, packages: tuple[str, ...]) -> list[tuple[str, str]]:
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
        if node.level or _is_bundled(node.module, packages) or node.module == "__future__":
            return []  # removed by _flatten: the name is the bundled definition itself
        return [(a.asname or a.name, f"from {node.module} import {a.name}") for a in node.names]
    children = [s for s in ast.iter_child_nodes(node) if isinstance(s, ast.stmt)]
    children += [s for handler in getattr(node, "handlers", []) for s in handler.body]
    return [binding for child in children for binding in _bindings(child, packages)]


def _check_bindings(
    tree: ast.Module, qualname: str, seen: dict[str, tuple[str, str]], packages: tuple[str, ...]
) -> None:
    """Record the top-level names of ``qualname``; raise if an earlier module bound one differently."""
    for statement in tree.body:
        for name, meaning in _bindings(statement, packages):
            if name in seen and seen[name][1] != meaning:
                raise ValueError(
                    f"cannot bundle: top-level name {name!r} is bound differently in {seen[name][0]} "
                    f"and {qualname}; rename one of them"
                )
            seen[name] = (qualname, meaning)


def _flatten(source: str, tree: ast.Module, packages: tuple[str, ...]) -> str:
    """``source`` without its future import, ``__all__`` and imports of other bundled modules.

    An import ``from .x import a as b`` becomes ``b = a``; an import inside a block becomes
    ``pass`` so the block stays valid.
    """
    lines = source.splitlines()
    replacements: list[tuple[int, int, list[str]]] = []
    for node in ast.walk(tree):
        drop = isinstance(node, ast.ImportFrom) and (
            node.level or _is_bundled(node.module, packages) or node.module == "__future__"
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


def stale_diff(committed: str, generated: str, context_lines: int = 3, max_lines: int = 40) -> str:
    """The first ``max_lines`` lines of a unified diff from the committed file to a fresh build ('' if equal)."""
    diff = difflib.unified_diff(
        committed.splitlines(), generated.splitlines(), "committed", "generated", n=context_lines, lineterm=""
    )
    return "\n".join(line for _, line in zip(range(max_lines), diff))


def main(argv: list[str] | None = None) -> int:
    """Write the shipped file (or, with ``--check``, report whether it is current); returns the exit status."""
    parser = argparse.ArgumentParser(prog=BUILD_COMMAND.removeprefix("python -m "), description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from a fresh build")
    parser.add_argument("--output", type=Path, default=shipped_file(), help="where to write (default: %(default)s)")
    args = parser.parse_args(argv)
    generated = build_bundle()
    committed = args.output.read_text(encoding="utf-8") if args.output.is_file() else ""
    if args.check:
        if committed == generated:
            print(f"{args.output} is current")
            return 0
        print(f"{args.output} is stale; run `{BUILD_COMMAND}`\n{stale_diff(committed, generated)}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(generated, encoding="utf-8", newline="\n")
    status = "unchanged" if committed == generated else "written"
    print(f"{args.output}: {status}, {len(generated.encode())} bytes, {generated.count(chr(10))} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
