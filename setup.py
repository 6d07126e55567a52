"""Build hook: the wheel records the commit it was built from (lab2prod/_build.json), so `lab2prod --version`
and every summary.json can name it after the checkout is gone. Everything else is in pyproject.toml."""

import json
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


class BuildWithCommit(build_py):
    def run(self):
        super().run()
        commit = _git("rev-parse", "HEAD")
        if commit and not self.editable_mode:
            dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
            target = Path(self.build_lib) / "lab2prod" / "_build.json"
            target.write_text(json.dumps({"commit": commit, "dirty": dirty}) + "\n")


setup(cmdclass={"build_py": BuildWithCommit})
