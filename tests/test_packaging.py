"""The project's top-level packages are its own: no other installed distribution ships one.

Two distributions that install the same top-level package overwrite each other's files, and
whichever comes first on sys.path hides the other (transformers 5.25 importing Hugging Face's
`kernels` got this project's attention kernels, when they were named `kernels`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "parrot-serve"


def top_level_packages() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return [p.removesuffix("*") for p in patterns]


def test_no_other_installed_distribution_ships_our_packages():
    owners = importlib.metadata.packages_distributions()
    clashes = {
        name: others
        for name in top_level_packages()
        if (others := sorted(set(owners.get(name, [])) - {DISTRIBUTION}))
    }
    assert not clashes, f"top-level packages also installed by other distributions: {clashes}"


def test_our_packages_import_from_this_checkout():
    for name in top_level_packages():
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        assert Path(spec.origin).resolve().is_relative_to(ROOT), (name, spec.origin)
