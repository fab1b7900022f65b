"""Print the README's "Tested versions" table from constraints.txt (the versions CI last passed with).

    python scripts/tested_versions.py [constraints.txt]

The table is generated, never typed: tests/test_readme.py checks that the README block equals this output.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# The packages a user asks about first; the lock file pins every dependency.
HEADLINE = ("torch", "diffusers", "accelerate", "huggingface-hub", "transformers", "datasets", "safetensors", "numpy",
            "scikit-learn")
PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)==(?P<version>[^\s;]+)\s*(?:;\s*(?P<marker>.+))?$")


def pinned_versions(constraints: Path) -> dict[str, list[tuple[str, str | None]]]:
    """{normalised name: [(version, environment marker or None), …]} of every `name==version` line."""
    pins: dict[str, list[tuple[str, str | None]]] = {}
    for line in constraints.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line.strip())
        if match:
            name = re.sub(r"[-_.]+", "-", match["name"]).lower()
            pins.setdefault(name, []).append((match["version"], match["marker"]))
    return pins


def versions_table(constraints: Path) -> str:
    """Markdown: the headline packages' pins (with their markers where a pin depends on the Python version)."""
    pins = pinned_versions(constraints)
    missing = [name for name in HEADLINE if name not in pins]
    if missing:
        raise SystemExit(f"{constraints} pins none of {missing}: regenerate it with `make lock`.")
    rows = ["| package | version CI tested |", "|---|---|"]
    for name in HEADLINE:
        versions = [f"{version} (`{marker}`)" if marker else version for version, marker in pins[name]]
        rows.append(f"| {name} | {' · '.join(versions)} |")
    return "\n".join(rows) + (
        f"\n\n{sum(map(len, pins.values()))} pins in all in `{constraints.name}`, resolved for every supported Python "
        "(≥ 3.11) and platform; `make install` installs them, `make lock` regenerates them, `make test-latest` "
        "tests the newest releases inside `pyproject.toml`'s ranges."
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    print(versions_table(Path(args[0]) if args else Path(__file__).resolve().parents[1] / "constraints.txt"))


if __name__ == "__main__":
    main()
