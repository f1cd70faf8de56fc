"""Build step that setup.cfg cannot express: a wheel carries the repository's top-level resource
folders (``datasets/``, ``strategies/``, ``reports/published/``) under ``avcl_bench/_bundled/``.

The folders stay at the top of the repository (a checkout and an editable install read them there);
``avcl_bench/paths.py`` looks in ``_bundled`` first, which exists only in a built package.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
#: repository folders (relative to the repository root) a built package carries, with their layout kept
BUNDLED_FOLDERS = ("datasets", "strategies", "reports/published")
#: the file kinds those folders hold: manifests, strategy defaults and their CSV tables
BUNDLED_SUFFIXES = {".yaml", ".csv"}
BUNDLED_PACKAGE_DIR = Path("avcl_bench") / "_bundled"


def bundled_files():
    """(source path, path relative to ``_bundled``) of every resource file a built package carries."""
    for folder in BUNDLED_FOLDERS:
        for path in sorted((HERE / folder).rglob("*")):
            if path.is_file() and path.suffix in BUNDLED_SUFFIXES:
                yield path, path.relative_to(HERE)


class BuildPyWithResources(build_py):
    """``build_py`` that also copies the resource folders into the build's package directory."""

    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads the repository's own folders
            return
        target = Path(self.build_lib) / BUNDLED_PACKAGE_DIR
        shutil.rmtree(target, ignore_errors=True)  # a reused build/ must not keep files deleted since
        for source, rel in bundled_files():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(source), str(target / rel))

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        return outputs + [str(Path(self.build_lib) / BUNDLED_PACKAGE_DIR / rel) for _, rel in bundled_files()]


setup(cmdclass={"build_py": BuildPyWithResources})
