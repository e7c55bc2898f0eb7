"""Writes a benchmark's results as JSON (under bench-results/ by default, not committed)."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: str | Path, results: object) -> None:
    """Writes `results` to `path` (its folder made as needed) and says where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path}")
