"""The README's own example of testing an agent offline, kept runnable: if this fails, the README is wrong."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _example() -> str:
    match = re.search(r"```python\n(from phonebridge.examples.pizzeria import agent.*?)```", README.read_text(), re.S)
    assert match, "the README lost its offline-test example"
    return match.group(1)


async def test_the_readme_example_runs_as_written():
    namespace: dict = {}
    exec(compile(_example(), "README.md", "exec"), namespace)
    await namespace["test_order_status"]()


def test_the_readme_example_runs_in_a_users_own_project(tmp_path):
    """A user's project: the example pasted into a test file, no pyproject, no pytest.ini, no conftest, so
    no asyncio_mode. Installing phonebridge (its pytest plugin) must be enough for the async test to run."""
    (tmp_path / "test_my_agent.py").write_text(_example())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_agent.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout, done.stdout
