"""Regenerate requirements.txt and requirements-dev.txt from pyproject.toml and the active venv.

pyproject.toml states what the project needs; the pins are the versions installed in the venv for
the transitive closure of those needs (markers evaluated for this interpreter). Run it after
changing a dependency and installing it: ``.venv/bin/python scripts/pin_requirements.py``.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_HEADER = (
    "# Pinned runtime dependencies (generated from pyproject.toml's [project.dependencies]\n"
    "# by scripts/pin_requirements.py). torch is the CPU build of 2.13.0; GPU images install a\n"
    "# CUDA build of the same version.\n"
)
DEV_HEADER = (
    "# Pinned test and lint tools on top of the runtime pins (scripts/pin_requirements.py).\n"
    "-r requirements.txt\n"
)


def closure(roots: list[str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    todo = [(Requirement(r), "") for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req, extra = todo.pop()
        env = default_environment() | {"extra": extra}
        if req.marker is not None and not req.marker.evaluate(env):  # type: ignore[arg-type]
            continue
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(req.name)
        # The local label (torch's +cpu) names a wheel index, not a version pip can resolve elsewhere.
        pins[name] = Version(dist.version).public
        for sub in dist.requires or []:
            sub_req = Requirement(sub)
            for wanted in {""} | set(req.extras):
                todo.append((sub_req, wanted))
    return pins


def render(pins: dict[str, str]) -> str:
    return "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def main() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = closure(project["dependencies"])
    dev = closure(project["optional-dependencies"]["dev"])
    dev_only = {k: v for k, v in dev.items() if k not in runtime}
    (ROOT / "requirements.txt").write_text(RUNTIME_HEADER + render(runtime))
    (ROOT / "requirements-dev.txt").write_text(DEV_HEADER + render(dev_only))
    print(f"{len(runtime)} runtime pins, {len(dev_only)} dev pins")


if __name__ == "__main__":
    main()
