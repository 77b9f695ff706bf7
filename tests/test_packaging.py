"""What `pip install` reads: pyproject.toml in the forms current setuptools accepts silently."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_license_is_an_spdx_string_and_setuptools_knows_that_form():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # The TOML-table form (`{ text = ... }`) is deprecated: setuptools warns on every install.
    assert pyproject["project"]["license"] == "Apache-2.0"
    (setuptools,) = [r for r in pyproject["build-system"]["requires"] if "setuptools" in r]
    minimum = re.fullmatch(r"setuptools>=(\d+)", setuptools)
    assert minimum and int(minimum.group(1)) >= 77, setuptools  # the first to take SPDX strings
