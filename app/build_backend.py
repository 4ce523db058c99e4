"""The build backend of turbocast: setuptools', refusing to build without Turbo's JavaScript.

The wheel ships Turbo's JavaScript as ``turbocast/static/turbo.js``, a link in the
repository to the build of ``@hotwired/turbo`` that ``npm ci`` puts in node_modules
(pinned in package-lock.json); setuptools copies the file it points to. Without
node_modules the link leads nowhere, and setuptools would leave the file out
without a word: this stops the build instead. An sdist holds the file itself, and
this module too (setuptools puts only the package's files in it), so a wheel built
from an sdist is built the same way. pyproject.toml names this module through
``backend-path``; it is not part of the demo and is not installed.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

from setuptools import build_meta
from setuptools.build_meta import (
    build_editable,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

__all__ = [
    "build_editable",
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable",
    "prepare_metadata_for_build_wheel",
]

#: Relative to the source tree, the directory every build hook runs in.
TURBO_JS = Path("app/turbo/static/turbo.js")
BACKEND = Path("app/build_backend.py")


def _require_turbo() -> None:
    if not TURBO_JS.is_file():
        raise RuntimeError(
            f"{TURBO_JS} does not lead to Turbo's JavaScript "
            f"({TURBO_JS.resolve(strict=False)} is missing): run `npm ci` first"
        )


def _add_backend(archive: Path) -> None:
    # Rewrite the sdist with this module added, under the sdist's top directory.
    with tarfile.open(archive) as old:
        members = [(m, old.extractfile(m)) for m in old.getmembers()]
        top = members[0][0].name.split("/")[0]
        contents = [(m, f.read() if f else None) for m, f in members]
    info = tarfile.TarInfo(f"{top}/{BACKEND}")
    data = BACKEND.read_bytes()
    info.size, info.mode, info.mtime = len(data), 0o644, int(BACKEND.stat().st_mtime)
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as new:
        for member, content in [*contents, (info, data)]:
            new.addfile(member, io.BytesIO(content) if content is not None else None)


def build_sdist(sdist_directory: str, config_settings: dict[str, Any] | None = None) -> str:
    _require_turbo()
    name = str(build_meta.build_sdist(sdist_directory, config_settings))
    _add_backend(Path(sdist_directory, name))
    return name


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    _require_turbo()
    return str(build_meta.build_wheel(wheel_directory, config_settings, metadata_directory))
