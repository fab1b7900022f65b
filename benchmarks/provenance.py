"""Where and when recorded results were measured: the line printed under each generated results table.

    python benchmarks/provenance.py docs/demo-metrics.json      # for a results file without a --table of its own

Results recorded by :func:`results_io.environment` carry ``environment`` records (date, CPU model, SIMD level,
threads, torch/diffusers/Python versions): the line names them (one clause per distinct machine and software
set, with the range of dates). Results recorded before those records existed say so: the date is the one of the
file's last commit (``git log -1 --format=%cs -- FILE``; "date not recorded" without git or before the first
commit), with the torch version where the file kept one, and "machine and versions not recorded".
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MACHINE_KEYS = ("cpu", "cpu_capability", "cpu_count", "threads")
SOFTWARE_KEYS = ("torch", "diffusers", "python")
SOFTWARE_NAMES = {"torch": "torch", "diffusers": "diffusers", "python": "Python"}


def environment_records(payload: Any) -> Iterator[dict[str, Any]]:
    """Every ``environment`` record in a results payload, wherever a benchmark nested it, in file order."""
    if isinstance(payload, dict):
        for key, value in payload.items():
            if key == "environment" and isinstance(value, dict):
                yield value
            else:
                yield from environment_records(value)
    elif isinstance(payload, list):
        for value in payload:
            yield from environment_records(value)


def legacy_values(payload: Any, key: str) -> set[str]:
    """The values of ``key`` (e.g. ``"torch"``, ``"date"``) that results recorded before environment records kept."""
    found: set[str] = set()
    if isinstance(payload, dict):
        for name, value in payload.items():
            if name == key and isinstance(value, str):
                found.add(value)
            else:
                found |= legacy_values(value, key)
    elif isinstance(payload, list):
        for value in payload:
            found |= legacy_values(value, key)
    return found


def git(*args: str) -> str | None:
    """``git args`` in the repository: its output, or None where git or the repository is unavailable."""
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def commit_date(path: Path) -> str | None:
    """The date (YYYY-MM-DD) of the last commit that touched ``path``.

    None without git, before the file's first commit, and in a shallow clone (there the oldest commit present
    seems to add every file, so its date would be wrong).
    """
    if git("rev-parse", "--is-shallow-repository") != "false":
        return None
    return git("log", "-1", "--format=%cs", "--", str(path)) or None


def date_range(dates: Sequence[str]) -> str:
    days = sorted({date[:10] for date in dates})
    return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"


def machine_clause(record: dict[str, Any]) -> str:
    """``Intel(R) Xeon(R) … (AVX512 kernels, 2 torch threads, 2 CPUs); torch 2.13.0+cpu, diffusers 0.42.1, …``."""
    threads = record.get("threads")
    details = [f"{record.get('cpu_capability') or 'unknown'} kernels"]
    if threads is not None:
        details.append(f"{threads} torch thread{'s' if threads != 1 else ''}")
    if record.get("cpu_count") is not None:
        details.append(f"{record['cpu_count']} CPUs")
    software = ", ".join(f"{SOFTWARE_NAMES[name]} {record[name]}" for name in SOFTWARE_KEYS if record.get(name))
    return f"{record.get('cpu') or 'unknown CPU'} ({', '.join(details)}); {software or 'versions not recorded'}"


def provenance(path: str | Path) -> str:
    """One line: the dates, machines and versions behind the results in ``path`` (a JSON file)."""
    path = Path(path)
    if not path.is_absolute():
        path = REPO / path
    payload = json.loads(path.read_text(encoding="utf-8"))
    records = list(environment_records(payload))
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    if records:
        groups: dict[tuple, list[str]] = {}
        for record in records:
            key = tuple(record.get(name) for name in (*MACHINE_KEYS, *SOFTWARE_KEYS))
            groups.setdefault(key, []).append(str(record.get("date") or "date not recorded"))
        clauses = []
        for key, dates in groups.items():
            record = dict(zip((*MACHINE_KEYS, *SOFTWARE_KEYS), key))
            clauses.append(f"{date_range(dates)} on {machine_clause(record)}")
        return f"Recorded in `{shown}`: " + "; and ".join(clauses) + "."
    recorded = legacy_values(payload, "date")
    when = f"recorded {date_range(sorted(recorded))}" if recorded else None
    if when is None:
        committed = commit_date(path)
        when = f"committed {committed}" if committed else "date not recorded"
    torch_versions = sorted(legacy_values(payload, "torch"))
    what = (
        f"torch {', '.join(torch_versions)}; CPU and the other versions not recorded"
        if torch_versions
        else "machine and versions not recorded"
    )
    return f"From `{shown}` ({when}; {what})."


def print_recorded(path: Path, render: Callable[[dict[str, Any]], str], record_command: str) -> None:
    """A benchmark's ``--table``: ``render`` of the results recorded at ``path``, then their provenance line.

    Raises:
        SystemExit: naming the file and ``record_command`` (how to record it) when it is missing.
    """
    path = Path(path)
    if not path.is_file():
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        raise SystemExit(f"{shown}: no recorded results; record them with {record_command}")
    try:
        from results_io import read_results  # run as a script: this folder is on sys.path
    except ModuleNotFoundError:
        from benchmarks.results_io import read_results
    print(render(read_results(path)))
    print()
    print(provenance(path))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="recorded results (JSON)")
    for path in parser.parse_args(argv).results:
        print(provenance(path))


if __name__ == "__main__":
    main()
