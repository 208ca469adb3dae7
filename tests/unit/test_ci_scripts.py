"""`.ci/system-deps` and the Makefile: system packages are checked first, listed once, installed when root.

The script runs against a PATH of stubs: `id` says who we are, `apt-get` records its arguments.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "system-deps"


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _run(
    tmp_path: Path, *args: str, uid: int = 0, present: tuple[str, ...] = (), **env: str
) -> tuple[int, str, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "apt.log"
    os.symlink("/usr/bin/env", bin_dir / "env")
    _stub(bin_dir, "id", f"echo {uid}")
    _stub(bin_dir, "apt-get", f'echo "$*" >> {log}')
    for tool in present:
        _stub(bin_dir, tool, "exit 0")
    out = subprocess.run(
        ["/bin/bash", str(SCRIPT), *args],
        env={"PATH": str(bin_dir), "PYTHON": "python3", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return out.returncode, out.stdout + out.stderr, calls


def test_root_installs_every_missing_package_once_after_apt_get_update(tmp_path: Path) -> None:
    rc, out, calls = _run(tmp_path, "--postgres", "--nginx")
    assert rc == 0, out
    wanted = "ffmpeg tesseract-ocr espeak-ng nginx make python3 python3-venv postgresql"
    # ffmpeg and ffprobe are one package: named once in "missing", once in "installing"
    assert out.count("ffmpeg") == 2
    assert calls == ["update -qq", f"install -y -qq --no-install-recommends {wanted}"]


def test_without_root_or_sudo_it_prints_the_command_and_fails_without_installing(tmp_path: Path) -> None:
    rc, out, calls = _run(tmp_path, uid=1000)
    assert rc == 1 and calls == []
    assert "sudo apt-get update && sudo apt-get install -y ffmpeg tesseract-ocr espeak-ng make python3" in out


def test_no_apt_setting_only_lists(tmp_path: Path) -> None:
    rc, out, calls = _run(tmp_path, MORAG_NO_APT="1")
    assert rc == 1 and calls == [] and "missing system packages: ffmpeg" in out


def test_nothing_missing_means_nothing_installed(tmp_path: Path) -> None:
    present = ("ffmpeg", "ffprobe", "tesseract", "espeak-ng", "make", "nginx", "python3", "pg_ctlcluster")
    rc, out, calls = _run(tmp_path, "--nginx", present=present)
    assert (rc, out, calls) == (0, "", [])


def test_make_checks_the_system_before_building_the_venv(tmp_path: Path) -> None:
    for goal in ("demo", "test"):
        plan = subprocess.run(
            ["make", "-n", goal, f"VENV={tmp_path / 'venv'}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        assert ".ci/system-deps" in plan and "-m venv" in plan, plan
        assert plan.index(".ci/system-deps") < plan.index("-m venv"), plan
