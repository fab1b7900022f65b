"""Griffe extension: load the packages that setuptools' ``package-dir`` maps under another name, where they import.

``pyproject.toml`` installs ``pipelines/`` as ``scratch_diffusion.pipelines`` and ``training/`` as
``scratch_diffusion.training``. Griffe (behind mkdocstrings) finds modules by walking folders, so it would find
neither under its import name. When the parent package (``scratch_diffusion``) is loaded, this extension visits
each mapped folder *as* the submodule (relative imports and cross-references then resolve to
``scratch_diffusion.pipelines.…``) and attaches it. Static analysis only: nothing is imported.

Configured in ``mkdocs.yml`` (``package_dir``: import name → folder, relative to the folder that holds the parent
package, i.e. the repository root for this flat layout); ``tests/docs/test_hooks.py`` checks that the mapping
equals ``[tool.setuptools.package-dir]``.
"""

from __future__ import annotations

from pathlib import Path

import griffe


class PackageDir(griffe.Extension):
    """Attaches ``package_dir``'s folders to their parent packages as griffe loads those."""

    def __init__(self, package_dir: dict[str, str]) -> None:
        super().__init__()
        self.package_dir = dict(package_dir)

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: object) -> None:
        """Griffe event: ``pkg`` (a top-level package) is loaded; attach the folders mapped below it."""
        root = Path(pkg.filepath).parent.parent  # the folder that holds the package folder
        for dotted, folder in sorted(self.package_dir.items()):  # parents before their children
            parent_path, _, name = dotted.rpartition(".")
            if dotted.split(".", 1)[0] != pkg.name or not parent_path:
                continue
            parent = pkg if parent_path == pkg.path else pkg.get_member(parent_path.split(".", 1)[1])
            module = visit_package(name, root / folder, parent, loader)
            loader.expand_exports(module)
            loader.expand_wildcards(module, external=False)


def visit_package(name: str, folder: Path, parent: griffe.Module, loader: griffe.GriffeLoader) -> griffe.Module:
    """Visit ``folder``'s ``__init__.py`` as ``parent.name``, then its modules and subpackages; attach each."""
    init = folder / "__init__.py"
    if not init.is_file():
        raise FileNotFoundError(f"package_dir maps {parent.path}.{name} to {folder}, which has no __init__.py")
    module = visit_file(name, init, parent, loader)
    for path in sorted(folder.iterdir()):
        if path.suffix == ".py" and path.name != "__init__.py":
            visit_file(path.stem, path, module, loader)
        elif path.is_dir() and (path / "__init__.py").is_file():
            visit_package(path.name, path, module, loader)
    return module


def visit_file(name: str, path: Path, parent: griffe.Module, loader: griffe.GriffeLoader) -> griffe.Module:
    """One module, visited with the loader's settings (docstring style, extensions), attached to ``parent``."""
    code = path.read_text(encoding="utf-8-sig")
    loader.lines_collection[path] = code.splitlines(keepends=False)
    module = griffe.visit(
        name,
        filepath=path,
        code=code,
        extensions=loader.extensions,
        parent=parent,
        docstring_parser=loader.docstring_parser,
        docstring_options=loader.docstring_options,
        lines_collection=loader.lines_collection,
        modules_collection=loader.modules_collection,
    )
    parent.set_member(name, module)
    return module
