"""Recording benchmark results: the machine they were measured on, and JSON files under ``benchmarks/results/``.

A measured number means little without the machine, library versions and thread count behind it, so
every benchmark that records its results stores an :func:`environment` record beside them (a benchmark run as
``python benchmarks/bench_x.py`` has this folder on ``sys.path``)::

    from results_io import environment, read_results, write_results

    write_results(RESULTS, {"environment": environment(), "rows": rows})
    table = read_results(RESULTS)["rows"]  # e.g. for a ``--table`` that prints without re-measuring

The API is exactly these three functions; the payload layout is each benchmark's own.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


def _cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``, else ``"unknown"``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None where it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Where and with what a benchmark ran, as a JSON-ready dict.

    Returns:
        ``date`` (UTC, ISO 8601, seconds), ``cpu`` (the CPU model name from ``/proc/cpuinfo``, or
        ``platform.processor()`` elsewhere), ``cpu_count`` (logical CPUs the OS reports),
        ``cpu_capability`` (``torch.backends.cpu.get_cpu_capability()``, the SIMD level torch's kernels
        dispatch to, e.g. ``"AVX2"``), ``platform`` (``platform.platform()``), ``python``, ``torch``,
        ``diffusers`` and ``numpy`` versions (None where not installed) and ``threads``
        (``torch.get_num_threads()`` at the time of the call: call it after setting the thread count).
    """
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "numpy": _version("numpy"),
        "threads": torch.get_num_threads(),
    }


def write_results(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Writes ``payload`` as indented JSON to ``path`` (parent folders created), replacing the file atomically.

    The text is written to a temporary file beside ``path`` and renamed over it, so an interrupted run never
    leaves a truncated results file. Raises ``TypeError`` if ``payload`` holds something JSON cannot encode.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=1, ensure_ascii=False) + "\n"
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(target)


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a results file written by :func:`write_results`.

    Raises:
        FileNotFoundError: naming ``path`` and how to create it, when nothing was recorded there yet.
    """
    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(f"no recorded results at {target}: run the benchmark without --table first")
    return json.loads(target.read_text(encoding="utf-8"))
