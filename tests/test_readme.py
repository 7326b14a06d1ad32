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


def test_ci_runs_the_readmes_test_command():
    """CI runs exactly what the README tells a newcomer to run, so the two cannot drift apart."""
    commands = re.findall(r"```\n(python3 -m venv .*?)\n```", README.read_text())
    test_command = next(c for c in commands if "pytest" in c)
    ci = (README.parent / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


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


PACKAGE = README.parent / "phonebridge"
# How the package reads a variable: os.environ.get / os.getenv / os.environ[...] / env.get (a Mapping passed
# in, os.environ by default), and the rows of config.ENV_VARS. Writing one (environ.setdefault) is not reading.
_READS = re.compile(r"""(?:environ\.get|getenv|env\.get|environ\[|EnvVar)\(?\s*["']([A-Z][A-Z0-9_]+)["']""")


def _variables_read() -> set[str]:
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        found |= set(_READS.findall(path.read_text()))
    return found


def test_every_environment_variable_the_package_reads_is_in_the_readme_configuration_table():
    text = README.read_text()
    table = text[text.index("## Configuration"):]
    table = table[: table.index("\n## ", 1)]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    read = _variables_read()
    assert {"PHONEBRIDGE_MAX_CALLS", "PHONEBRIDGE_EVENT_LOOP", "PORT", "PHONEBRIDGE_FROM_NUMBER"} <= read  # the grep works
    assert sorted(read - documented) == []
