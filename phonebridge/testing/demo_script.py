"""The model's side of `phonebridge demo`: Luigi's pizzeria, scripted for the LiveEmulator.

Greeting, a question answered after a tool call, an order status after another, a long answer the caller
cuts into, and a goodbye with end_call. The caller's side is in phonebridge.demo.
"""

from __future__ import annotations

from phonebridge.testing.live_script import CallTools, Hear, Say, Script, ToolCallSpec, WaitForCaller, WaitForText


def demo_script() -> Script:
    return Script(
        [
            WaitForText(),
            Say("Hi, thanks for calling Luigi's pizzeria! How can I help you today?"),
            WaitForCaller(),
            Hear("Hi! Which vegetarian pizzas do you have?"),
            CallTools((ToolCallSpec("get_menu", {"vegetarian_only": True}),)),
            Say("We have a margherita and a quattro formaggi. A large margherita is thirteen dollars."),
            WaitForCaller(),
            Hear("Great. And where is my order, A-1042?"),
            CallTools((ToolCallSpec("order_status", {"order_id": "A-1042"}),)),
            Say(
                "Your order A-1042 is out for delivery and about ten minutes away. While you wait, let me tell "
                "you about tonight's specials: a truffle pizza, a seafood linguine, and our famous tiramisu, "
                "all made fresh in house every single day."
            ),
            WaitForCaller(),
            Hear("Sorry to cut in, that's all I needed. Thanks, bye!"),
            CallTools((ToolCallSpec("end_call", {}),)),
            Say("You're welcome, enjoy your pizza. Goodbye!"),
        ],
        name="pizzeria-demo",
    )
