"""Build hook (setuptools, named in pyproject.toml's [tool.setuptools.cmdclass]): the shipped
recipes and DeepSpeed templates become package data of `vlalign._shipped`.

`build_py` copies `recipes/**/*.yaml` to `vlalign/_shipped/recipes/` and `cluster/deepspeed/*.json`
to `vlalign/_shipped/deepspeed/` in the wheel; `sdist` puts the same files in the source archive,
so a wheel built from it has them too. Editable installs read the checkout (see __init__).
Imported only by setuptools at build time, never at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

PACKAGE = "vlalign._shipped"
# (folder in the checkout, folder under vlalign/_shipped/ in the wheel, files)
SHIPPED = (
    ("recipes", "recipes", "**/*.yaml"),
    (os.path.join("cluster", "deepspeed"), "deepspeed", "*.json"),
)


def shipped_files(source: str, pattern: str) -> list[str]:
    """Files of `source` matching `pattern`, relative to it, sorted."""
    root = Path(source)
    return sorted(str(p.relative_to(root)) for p in root.glob(pattern) if p.is_file())


class BuildPy(build_py):
    """build_py that adds the shipped files to vlalign._shipped's package data."""

    def _get_data_files(self):
        files = list(super()._get_data_files())
        if getattr(self, "editable_mode", False):
            return files
        target = os.path.join(self.build_lib, *PACKAGE.split("."))
        for source, dest, pattern in SHIPPED:
            names = shipped_files(source, pattern)
            if names:
                files.append((PACKAGE, source, os.path.join(target, dest), names))
        return files


class Sdist(sdist):
    """sdist that carries the shipped files (a wheel built from the sdist needs them)."""

    def make_release_tree(self, base_dir, files) -> None:
        extra = [
            os.path.join(source, name)
            for source, _, pattern in SHIPPED
            for name in shipped_files(source, pattern)
        ]
        super().make_release_tree(base_dir, [*files, *(f for f in extra if f not in files)])
