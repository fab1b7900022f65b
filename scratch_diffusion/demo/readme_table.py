"""Print the documentation's demo table (docs/benchmarks.md) from a demo run's ``metrics.json``.

    python -m scratch_diffusion.demo.readme_table outputs/demo/metrics.json

(Not imported by the package, so ``python -m`` runs it without a second copy of the module.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scratch_diffusion.demo.report import readme_table


def main(argv: list[str] | None = None) -> int:
    """Print the demo table for a ``metrics.json``; exit status 2 with ``error:`` for an unreadable file."""
    parser = argparse.ArgumentParser(
        prog="python -m scratch_diffusion.demo.readme_table",
        description="Print the documentation's demo table (markdown) from the metrics.json a demo run wrote.",
    )
    parser.add_argument("metrics_json", help="e.g. outputs/demo/metrics.json")
    args = parser.parse_args(argv)
    try:
        report = json.loads(Path(args.metrics_json).read_text())
        text = readme_table(report)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(
            f"error: {args.metrics_json!r} is not a demo metrics.json: {type(error).__name__}: {error}", file=sys.stderr
        )
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
