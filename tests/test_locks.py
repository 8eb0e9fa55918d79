"""Every Python dependency is locked with hashes (lock/*.txt), and the locks agree with the declared pins."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Each requirements file (what a CDK user reads and edits) and the lock `make lock` writes from it.
LOCKS = {
    "requirements.txt": "lock/synth.txt",
    "requirements-dev.txt": "lock/dev.txt",
    "requirements-checkov.txt": "lock/checkov.txt",
    "requirements-uv.txt": "lock/uv.txt",
}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.MULTILINE)


def canonical(name: str) -> str:
    """PEP 503: case, '-', '_' and '.' do not tell names apart."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(path: Path) -> dict[str, str]:
    pins = {canonical(name): version for name, version in PIN.findall(path.read_text())}
    for line in path.read_text().splitlines():
        if line.startswith("-r "):
            pins |= declared(path.parent / line.split()[1])
    return pins


def locked(path: Path) -> dict[str, str]:
    return {canonical(name): version for name, version in PIN.findall(path.read_text())}


@pytest.mark.parametrize(("requirements", "lock"), LOCKS.items())
def test_the_lock_holds_every_declared_pin(requirements: str, lock: str) -> None:
    wanted, pinned = declared(ROOT / requirements), locked(ROOT / lock)
    disagreements = {
        name: (version, pinned.get(name)) for name, version in wanted.items() if pinned.get(name) != version
    }
    assert not disagreements, f"{lock} disagrees with {requirements} (declared, locked): {disagreements}; run make lock"


@pytest.mark.parametrize("lock", LOCKS.values())
def test_every_locked_package_is_pinned_with_hashes(lock: str) -> None:
    entries = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / lock).read_text().split("\n", 2)[2])
    assert entries
    for entry in entries:
        assert PIN.match(entry), entry[:80]
        assert "--hash=sha256:" in entry, entry[:80]


def test_synth_installs_what_the_tests_install() -> None:
    # The synth lock is written under the dev lock's constraints: the same versions, so a template
    # synthesized by `make synth` is the one the suite checked.
    synth, dev = locked(ROOT / "lock/synth.txt"), locked(ROOT / "lock/dev.txt")
    assert {name: dev.get(name) for name in synth} == synth
    assert "pytest" not in synth
    assert "checkov" not in synth


def test_the_lock_check_fails_on_a_pin_the_lock_lacks(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text((ROOT / "requirements.txt").read_text().replace("PyYAML==6.0.4", "PyYAML==6.0.3"))
    assert declared(requirements)["pyyaml"] != locked(ROOT / "lock/synth.txt")["pyyaml"]
