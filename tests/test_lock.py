"""requirements.lock (issue #18, item 6): the whole environment a fresh `make install` builds, which
holds every package to one version so that two installs a month apart compute the same numbers."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.helpers import REPO

LINE = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)$")


def locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = LINE.match(line)
        assert match, f"not an exact pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"{name} is locked twice"
        pins[name] = match.group(2)
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_every_pin_of_pyproject_is_locked_at_its_version():
    lock = locked()
    for req in declared():
        (spec,) = req.specifier  # pyproject pins each dependency exactly
        assert spec.operator == "==", req
        name = canonicalize_name(req.name)
        assert name in lock, f"{name} is in pyproject.toml but not in requirements.lock: run `make lock`"
        # (a local wheel may carry a build label, e.g. torch 2.14.1+cu130 for the pin 2.14.1)
        assert Version(lock[name]).public == Version(spec.version).public, \
            f"{name}: {spec.version} in pyproject.toml, {lock[name]} in requirements.lock: run `make lock`"
    assert "dvt" not in lock  # the project itself is installed from the checkout


def test_this_environment_is_the_locked_one():
    """The environment the tests run in was built from the lock: every locked package at its version."""
    lock = locked()
    assert len(lock) > 100  # the whole resolved set, not only the direct pins
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    wrong = {name: (version, installed.get(name)) for name, version in lock.items() if installed.get(name) != version}
    assert not wrong, f"installed packages differ from requirements.lock (locked, installed): {wrong}"
