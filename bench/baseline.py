"""`bench/run --baseline REV`: the same benchmark against another revision, in the same run.

A temporary `git worktree` of REV (detached, removed afterwards whatever happens) is what the baseline's server
imports phonebridge from (bench/steps.tree_env: PYTHONPATH and the working directory); the load generator, the
Live server, the agent and this file's measuring code are the current tree's for both, so a difference between
the two columns is the server's. Steps alternate, baseline first then current, one fresh server each.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from steps import imported_from, tree_env

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[tuple[Path, str]]:
    """A detached checkout of `rev` in a temporary directory, and the commit it resolved to; removed on exit."""
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    parent = Path(tempfile.mkdtemp(prefix="phonebridge-baseline-"))
    tree = parent / "tree"
    _git("worktree", "add", "--detach", "--quiet", str(tree), sha)
    try:
        found = imported_from(tree_env(tree), tree)
        if Path(found).resolve() != tree.resolve():
            raise RuntimeError(f"the baseline's server would import phonebridge from {found}, not {tree}")
        yield tree, sha
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(parent, ignore_errors=True)
        with contextlib.suppress(subprocess.CalledProcessError):
            _git("worktree", "prune")


def quality_of(tree: Path, messages: int) -> dict[str, Any]:
    """bench/quality.measure() (this tree's code) in a process that imports the baseline's phonebridge.
    A baseline too old for part of it (no direct reader, say) gives {"error": ...}: its rows then read n/a."""
    code = (f"import sys, json; sys.path.insert(0, {str(BENCH)!r}); import quality; "
            f"print(json.dumps(quality.measure({messages})))")
    done = subprocess.run([sys.executable, "-c", code], env=tree_env(tree), cwd=tree, capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))
