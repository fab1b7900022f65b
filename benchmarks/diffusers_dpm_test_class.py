"""Run diffusers' own ``DPMSolverMultistepSchedulerTest`` against ScratchDPMSolverScheduler (not part of make test).

diffusers' test files are not installed with the package, so this takes them from a diffusers source checkout or
a (bare) git directory, copies ``tests/schedulers`` (and the two helper modules it imports) into a temporary
package, subclasses the test class with ``scheduler_classes = (ScratchDPMSolverScheduler,)`` and runs it with
unittest. Nothing is copied into this repository. Prints passed / total and the names of the failures::

    python benchmarks/diffusers_dpm_test_class.py /work/.mirror/huggingface+diffusers/repo      # a git dir
    python benchmarks/diffusers_dpm_test_class.py ~/src/diffusers                             # a checkout
    python benchmarks/diffusers_dpm_test_class.py ~/src/diffusers -v                          # with tracebacks

The expected failures are our deliberate refusals (a ``ValueError`` at construction or ``set_timesteps`` where
diffusers clamps): ε-prediction at zero terminal SNR and ``trained_betas`` whose length is not
``num_train_timesteps``.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

# What diffusers' scheduler tests import from the rest of its tests folder (test_schedulers.py's relative imports).
NEEDED = ("tests/__init__.py", "tests/testing_utils.py", "tests/others", "tests/schedulers")
PACKAGE = "diffusers_upstream_tests"  # not "tests": that name is this repository's own test package


def export_tests(source: Path, destination: Path) -> str:
    """Copy ``NEEDED`` from a checkout or a git dir into ``destination/PACKAGE``; return a provenance line."""
    target = destination / PACKAGE
    if (source / "tests" / "schedulers").is_dir():  # a working tree
        for name in NEEDED:
            path = source / name
            out = target / Path(name).relative_to("tests")
            out.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if path.is_dir() else shutil.copy)(path, out)
        return f"checkout {source}"
    git = ["git", f"--git-dir={source}"]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    archive = subprocess.run([*git, "archive", "HEAD", *NEEDED], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)
    (destination / "tests").rename(target)
    return f"git dir {source} at {commit}"


def run(source: Path, verbose: bool) -> tuple[int, int, list[str]]:
    """(passed, total, failed test names) of DPMSolverMultistepSchedulerTest with our scheduler class."""
    from scratch_schedulers import ScratchDPMSolverScheduler

    with tempfile.TemporaryDirectory() as tmp:
        print(f"diffusers tests from {export_tests(source, Path(tmp))}")
        sys.path.insert(0, tmp)
        try:
            module = importlib.import_module(f"{PACKAGE}.schedulers.test_scheduler_dpm_multi")
            upstream = module.DPMSolverMultistepSchedulerTest
            ours = type("ScratchDPMSolverSchedulerTest", (upstream,),
                        {"scheduler_classes": (ScratchDPMSolverScheduler,)})
            suite = unittest.defaultTestLoader.loadTestsFromTestCase(ours)
            stream = sys.stderr if verbose else io.StringIO()
            result = unittest.TextTestRunner(stream=stream, verbosity=2 if verbose else 0).run(suite)
        finally:
            sys.path.remove(tmp)
    failed = sorted(test.id().rsplit(".", 1)[-1] for test, _ in result.failures + result.errors)
    skipped = len(result.skipped)
    total = result.testsRun - skipped
    return total - len(failed), total, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("diffusers", type=Path, help="a diffusers source checkout, or its (bare) git directory")
    parser.add_argument("-v", "--verbose", action="store_true", help="print unittest's report with tracebacks")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    passed, total, failed = run(args.diffusers.expanduser(), args.verbose)
    print(f"DPMSolverMultistepSchedulerTest with ScratchDPMSolverScheduler: {passed} / {total} passed (skipped "
          "tests not counted)")
    for name in failed:
        print(f"  failed: {name}")


if __name__ == "__main__":
    main()
