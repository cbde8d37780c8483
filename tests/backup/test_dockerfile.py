"""The container image is built from every package the project installs.

No container engine runs here, so the Dockerfile is read: each top-level package
that pyproject's setuptools ``include`` names must be copied into the image before
``pip install .``, or the image starts without it (``ModuleNotFoundError``).
"""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _packages() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({pattern.split(".")[0].rstrip("*") for pattern in include})


def _instructions() -> list[list[str]]:
    lines = (ROOT / "Dockerfile").read_text("utf-8").replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip() and line[0] != "#"]


def test_every_installed_package_is_copied_before_the_install() -> None:
    """Each package of pyproject's include is a COPY to its own name before pip."""
    instructions = _instructions()
    install = next(
        at
        for at, words in enumerate(instructions)
        if words[0] == "RUN" and "pip" in words and "install" in words
    )
    copied = {
        (source, words[-1].rstrip("/"))
        for words in instructions[:install]
        if words[0] == "COPY"
        for source in words[1:-1]
    }
    packages = _packages()

    assert {"backup", "reports", "domain"} <= set(packages)
    for package in packages:
        assert (ROOT / package / "__init__.py").is_file(), package
        assert (package, package) in copied, f"Dockerfile does not copy {package}/"
    # pip reads the project's metadata, readme included, from these two files.
    assert {"pyproject.toml", "README.md"} <= {source for source, _ in copied}
