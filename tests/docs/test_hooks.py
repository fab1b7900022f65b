"""The build hooks: TeX → MathML (docs/hooks/mathml.py) and the two griffe extensions behind the API pages."""

from __future__ import annotations

import logging
import tomllib

import griffe
import markdown
import pytest
import yaml

from .helpers import DOCS, REPO, docs_module

mathml = docs_module("hooks/mathml.py")
package_dir = docs_module("hooks/griffe_package_dir.py")
rest_markup = docs_module("hooks/griffe_rest_markup.py")


def arithmatex_html(text: str) -> str:
    """``text`` through Markdown with arithmatex configured as in mkdocs.yml."""
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    options = next(ext["pymdownx.arithmatex"] for ext in config["markdown_extensions"] if "pymdownx.arithmatex" in ext)
    configs = {"pymdownx.arithmatex": options}
    return markdown.markdown(text, extensions=["pymdownx.arithmatex"], extension_configs=configs)


def test_inline_and_display_math_become_mathml() -> None:
    html = mathml.render_math(arithmatex_html("Inline $a < b_t$ here.\n\n$$x_t = a_t x_0 + b_t \\varepsilon$$\n"))
    assert "arithmatex" not in html
    assert html.count("<math ") == 2
    assert 'display="inline"' in html and 'display="block"' in html
    assert '<div class="math-display">' in html
    assert "<mo>&lt;</mo>" in html or "&#x0003C;" in html  # the escaped < came through as an operator
    assert 'alttext="a &lt; b_t"' in html  # the TeX is kept for readers without MathML


def test_prose_dollars_and_parentheses_stay_text() -> None:
    html = mathml.render_math(arithmatex_html("A price of 5 $ and \\(not math\\) here.\n"))
    assert "<math" not in html and "5 $" in html


@pytest.mark.parametrize("tex", ["x^", "\\left( x", "\\varepsilonn + 1"], ids=["unparsable", "unbalanced", "typo"])
def test_bad_tex_is_a_warning_naming_the_page(tex: str, caplog: pytest.LogCaptureFixture) -> None:
    html = arithmatex_html(f"Broken ${tex}$ formula.\n")
    assert 'class="arithmatex"' in html
    with caplog.at_level(logging.WARNING, logger="mkdocs.hooks.mathml"):
        out = mathml.render_math(html, "page.md")
    assert out == html  # left as it was, and the strict build fails on the warning
    assert [record.getMessage() for record in caplog.records if "page.md" in record.getMessage()]


def test_package_dir_mapping_is_pyproject_s() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    mkdocstrings = next(plugin["mkdocstrings"] for plugin in config["plugins"] if "mkdocstrings" in plugin)
    python = mkdocstrings["handlers"]["python"]
    options = next(e for e in python["options"]["extensions"] if isinstance(e, dict))
    mapping = options["docs/hooks/griffe_package_dir.py"]["package_dir"]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert mapping == pyproject["tool"]["setuptools"]["package-dir"]


def test_mapped_packages_load_under_their_import_names() -> None:
    extension = package_dir.PackageDir(package_dir={"scratch_diffusion.pipelines": "pipelines",
                                                    "scratch_diffusion.training": "training"})  # fmt: skip
    loader = griffe.GriffeLoader(search_paths=[str(REPO)], extensions=griffe.load_extensions(extension))
    loader.load("scratch_diffusion", try_relative_path=False)
    unresolved, _ = loader.resolve_aliases(implicit=False, external=None)
    collection = loader.modules_collection
    pipeline = collection["scratch_diffusion.pipelines.ScratchDiffusionPipeline"]
    assert pipeline.final_target.path == "scratch_diffusion.pipelines.pipeline_scratch_diffusion." + pipeline.name
    vae_trainer = collection["scratch_diffusion.training.vae.run_vae_training"].final_target
    assert vae_trainer.filepath.is_relative_to(REPO / "training")
    assert collection["scratch_diffusion.ScratchDiffusionPipeline"].final_target is pipeline.final_target
    assert not [path for path in unresolved if path.startswith("scratch_diffusion.")]


def test_rest_markup_becomes_markdown() -> None:
    text = (
        "See :func:`~scratch_schedulers.samplers.reverse_step` and :class:`.noise_path.Parametrization`.\n\n"
        "Notation:\n\n"
        "============  ===============================\n"
        "``T``         number of training timesteps\n"
        "``σ``         flow noise level,\n"
        "              the timestep is σ·T\n"
        "============  ===============================\n\n"
        "Command line::\n\n    python -m x\n\n"
        "Args:\n    num_train_timesteps, beta_start,\n    beta_end: as in the DDPM\n        scheduler.\n"
        "    eta: noise.\n\nReturns:\n    a, b: not parameters.\n"
    )
    assert rest_markup.to_markdown(text) == (
        "See ``reverse_step`` and ``noise_path.Parametrization``.\n\n"
        "Notation:\n\n"
        "- ``T`` — number of training timesteps\n"
        "- ``σ`` — flow noise level, the timestep is σ·T\n\n"
        "Command line:\n\n    python -m x\n\n"
        "Args:\n    num_train_timesteps: as in the DDPM\n        scheduler.\n    beta_start: as in the DDPM\n"
        "        scheduler.\n    beta_end: as in the DDPM\n        scheduler.\n    eta: noise.\n\n"
        "Returns:\n    a, b: not parameters.\n"
    )


def test_every_api_page_is_in_the_nav() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    api = next(entry["API reference"] for entry in config["nav"] if "API reference" in entry)
    assert sorted(next(iter(entry.values())) for entry in api) == sorted(
        f"api/{path.name}" for path in (DOCS / "api").glob("*.md")
    )
