"""benchmarks/provenance.py: the line beside each results table (date, machine, versions — or what is missing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import provenance

ENVIRONMENT = {
    "date": "2026-12-07T08:00:00+00:00", "cpu": "Example CPU", "cpu_count": 2, "cpu_capability": "AVX2",
    "platform": "Linux", "python": "3.11.7", "torch": "2.13.0+cpu", "diffusers": "0.42.1", "numpy": "2.0",
    "threads": 1,
}  # fmt: skip


def write(tmp_path: Path, payload: object) -> Path:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def test_environment_records_name_date_machine_and_versions(tmp_path: Path) -> None:
    later = {**ENVIRONMENT, "date": "2026-12-09T08:00:00+00:00"}
    other = {**ENVIRONMENT, "threads": 2}
    path = write(tmp_path, {"runs": [{"environment": ENVIRONMENT}, {"environment": later}, {"environment": other}]})
    line = provenance.provenance(path)
    assert line.startswith(f"Recorded in `{path}`: 2026-12-07 to 2026-12-09 on Example CPU (AVX2 kernels, 1 torch")
    assert "; and 2026-12-07 on Example CPU (AVX2 kernels, 2 torch threads, 2 CPUs)" in line
    assert "torch 2.13.0+cpu, diffusers 0.42.1, Python 3.11.7" in line


def test_results_without_records_say_so_with_the_commit_date(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {"seed0": {"fd": 1.0}})
    monkeypatch.setattr(provenance, "commit_date", lambda _: "2026-12-01")
    assert provenance.provenance(path) == f"From `{path}` (committed 2026-12-01; machine and versions not recorded)."
    monkeypatch.setattr(provenance, "commit_date", lambda _: None)  # no git, a shallow clone, never committed
    assert provenance.provenance(path) == f"From `{path}` (date not recorded; machine and versions not recorded)."


def test_a_legacy_date_and_torch_version_are_used(tmp_path: Path) -> None:
    path = write(tmp_path, {"run": {"date": "2026-11-30", "torch": "2.13.0+cpu"}})
    line = provenance.provenance(path)
    assert line == f"From `{path}` (recorded 2026-11-30; torch 2.13.0+cpu; CPU and the other versions not recorded)."


def test_commit_date_is_none_without_git(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provenance, "git", lambda *args: None)
    assert provenance.commit_date(provenance.REPO / "benchmarks" / "results" / "recipes.json") is None


def test_a_missing_results_file_names_the_recording_command(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"record them with `python bench\.py`"):
        provenance.print_recorded(tmp_path / "missing.json", str, "`python bench.py`")
