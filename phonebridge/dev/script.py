"""Sans-I/O: the emulator's side of `phonebridge dev`: a conversation derived from the agent's own tools.

Without GEMINI_API_KEY the softphone talks to the built-in LiveEmulator, which cannot understand speech. So
that the call still exercises *your* agent, the script greets, and then each time the caller speaks and
stops, calls the next of the agent's tools with example arguments made from its declared schema (an enum's
first value, the `e.g. X` / `like X` in a parameter's description, a date for `YYYY-MM-DD`, ...), says it
did, and after the last tool keeps answering every turn. The built-in `end_call` and `transfer_call` are
left out: the caller ends the call with the page's hang-up button.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from phonebridge.testing.live_script import CallTools, Hear, Say, Script, Step, ToolCallSpec, WaitForCaller, WaitForText

BUILT_IN_TOOLS = frozenset({"end_call", "transfer_call"})
GREETING = (
    "Hello! This is the phonebridge emulator, standing in for Gemini Live. I can't understand words, "
    "but each time you speak and stop, I will call one of your agent's tools."
)
LOOP_ANSWER = "I heard you. Set GEMINI_API_KEY to talk to the real Gemini."
HEARD = "(you spoke: the emulator hears speech but does not transcribe it)"
_HINT = re.compile(r"(?:e\.g\.|eg\.|for example|like|such as)\s*[:,]?\s*['\"`]?([^\s'\"`,;)]+)", re.IGNORECASE)


def declarations_of(setup: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The function declarations in an emulator connection's normalised setup (camelCase keys)."""
    found: list[Mapping[str, Any]] = []
    for tool in setup.get("tools") or []:
        if isinstance(tool, Mapping):
            found.extend(d for d in tool.get("functionDeclarations") or [] if isinstance(d, Mapping))
    return found


def derived_script(declarations: Sequence[Mapping[str, Any]], *, greets: bool = True) -> Script:
    """Greet, then one tool per caller turn, then answer every turn forever."""
    steps: list[Step] = []
    if greets:
        # The bridge sends the agent's greeting prompt as text first; without one the model speaks first anyway.
        steps.append(WaitForText(timeout_s=10.0))
    steps.append(Say(GREETING))
    for declaration in declarations:
        name = str(declaration.get("name", ""))
        if not name or name in BUILT_IN_TOOLS:
            continue
        args = example_args(declaration.get("parameters"), str(declaration.get("description") or ""))
        steps += [
            WaitForCaller(timeout_s=3600.0),
            Hear(HEARD),
            CallTools((ToolCallSpec(name, args),), timeout_s=60.0),
            Say(f"I called {name.replace('_', ' ')}. Its answer is in the panel."),
        ]
    loop_from = len(steps)
    steps += [WaitForCaller(timeout_s=3600.0), Hear(HEARD), Say(LOOP_ANSWER)]
    return Script(steps, name="dev-derived", loop_from=loop_from)


def example_args(schema: Any, description: str = "") -> dict[str, Any]:
    """Arguments for a declaration's `parameters` (an OpenAPI object schema): its required properties. A
    tool's own `description` ("Look up an order, e.g. A-1042") speaks for its only required parameter."""
    if not isinstance(schema, Mapping):
        return {}
    properties = schema.get("properties") or {}
    required = [str(r) for r in schema.get("required") or [] if r in properties]
    if len(required) == 1 and isinstance(properties[required[0]], Mapping) and _HINT.search(description):
        only = dict(properties[required[0]])
        only["description"] = f"{only.get('description') or ''} {description}"
        properties = {required[0]: only}
    return {name: example_value(properties[name], name) for name in required}


def example_value(schema: Any, name: str = "") -> Any:
    """A plausible value for one property schema (types in either case: `STRING` or `string`)."""
    if not isinstance(schema, Mapping):
        return "example"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = str(schema.get("type", "string")).lower()
    description = str(schema.get("description") or "")
    if kind == "boolean":
        return True
    if kind in ("integer", "number"):
        low = schema.get("minimum")
        value = low if isinstance(low, (int, float)) and not isinstance(low, bool) else 2
        return int(value) if kind == "integer" else float(value)
    if kind == "array":
        return [example_value(schema.get("items"), name)]
    if kind == "object":
        return example_args(schema)
    return _example_string(description, str(schema.get("format") or ""), name)


def _example_string(description: str, fmt: str, name: str) -> str:
    hint = _HINT.search(description)
    if hint:
        return hint.group(1).rstrip(".")
    if fmt == "date-time":
        return "2030-01-15T19:30:00Z"
    if fmt == "date" or "YYYY-MM-DD" in description:
        return "2030-01-15"
    if "HH:MM" in description:
        return "19:30"
    return f"example {name}".strip() if name else "example"
