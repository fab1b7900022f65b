"""`mkdocs build --strict` of the whole site succeeds offline, and strict mode rejects what it must.

The site build is the one `make docs` runs (mkdocs.yml: Material without web fonts, mkdocstrings API pages from the
docstrings, formulas as MathML). The negative controls build a three-page site with the same validation settings
and one defect each — a broken link, a broken anchor, a page outside the nav — and expect the build to fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .helpers import REPO

# An offline build: nothing here may point the reader's browser at another host for code or fonts.
EXTERNAL_RESOURCE = re.compile(r"""<(?:script|link)\b[^>]*\b(?:src|href)=["']https?://""", re.I)


def mkdocs_build(config: Path, site_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config)]
    return subprocess.run(
        [*command, "--site-dir", str(site_dir)], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    result = mkdocs_build(REPO / "mkdocs.yml", site, REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return site


def test_strict_build_renders_every_page(built_site: Path) -> None:
    nav_pages = ["index", "concepts", "demo", "schedulers", "pipeline", "training", "cli", "latent", "evaluation",
                 "reliability", "benchmarks", "architecture", "contributing"]  # fmt: skip
    for page in nav_pages:
        assert (built_site / ("" if page == "index" else page) / "index.html").is_file(), page
    api_pages = sorted(path.parent.name for path in (built_site / "api").glob("*/index.html"))
    assert api_pages == sorted(path.stem for path in (REPO / "docs" / "api").glob("*.md"))


def test_api_pages_hold_the_docstrings(built_site: Path) -> None:
    """mkdocstrings resolved the identifiers, including the package-dir-mapped scratch_diffusion.pipelines."""
    schedulers = (built_site / "api" / "schedulers" / "index.html").read_text(encoding="utf-8")
    assert 'id="scratch_schedulers.ScratchDPMSolverScheduler"' in schedulers
    assert "DPM-Solver" in schedulers and "set_timesteps" in schedulers
    pipelines = (built_site / "api" / "pipelines" / "index.html").read_text(encoding="utf-8")
    assert 'id="scratch_diffusion.pipelines.ScratchDiffusionPipeline"' in pipelines
    assert ":func:" not in pipelines + schedulers  # reST roles rewritten (docs/hooks/griffe_rest_markup.py)


def test_formulas_are_mathml_and_nothing_loads_from_the_network(built_site: Path) -> None:
    pages = {path: path.read_text(encoding="utf-8") for path in built_site.rglob("*.html")}
    leftovers = [str(path) for path, html in pages.items() if 'class="arithmatex"' in html]
    assert not leftovers, f"formulas left as TeX in {leftovers}"
    assert "<math" in pages[built_site / "benchmarks" / "index.html"]
    external = {str(path): EXTERNAL_RESOURCE.findall(html) for path, html in pages.items()}
    assert not any(external.values()), {path: found for path, found in external.items() if found}


DEFECTS = {
    "broken link": ("[there](missing.md)", None),
    "broken anchor": ("[there](other.md#no-such-heading)", None),
    "page outside the nav": ("fine", "orphan.md"),
}


@pytest.mark.parametrize("defect", DEFECTS)
def test_strict_build_fails_on(defect: str, tmp_path: Path) -> None:
    """The validation settings of mkdocs.yml make each of these an error, not a log line."""
    link, orphan = DEFECTS[defect]
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8").replace("!ENV", ""))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(f"# Home\n\n{link}\n", encoding="utf-8")
    (docs / "other.md").write_text("# Other\n\n## A heading\n", encoding="utf-8")
    if orphan:
        (docs / orphan).write_text("# Orphan\n", encoding="utf-8")
    small = {
        "site_name": "defect",
        "strict": True,
        "theme": config["theme"],
        "validation": config["validation"],
        "markdown_extensions": config["markdown_extensions"],
        "nav": ["index.md", "other.md"],
    }
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(small), encoding="utf-8")
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site", tmp_path)
    assert result.returncode != 0, f"{defect} was accepted:\n{result.stderr}"
    # and the same small site without the defect builds (so the failure is the defect's)
    (docs / "index.md").write_text("# Home\n\n[there](other.md#a-heading)\n", encoding="utf-8")
    if orphan:
        (docs / orphan).unlink()
    assert mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site", tmp_path).returncode == 0
