"""The README's own example of testing an agent offline, kept runnable: if this fails, the README is wrong."""

import re
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
