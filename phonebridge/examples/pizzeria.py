"""Luigi's pizzeria: a phone agent that reads the menu, tracks orders, books tables and hands over to a human.

Run it:  phonebridge serve --agent examples/pizzeria.py   (or --agent phonebridge.examples.pizzeria)
Try it offline:  phonebridge demo --agent examples/pizzeria.py

The "database" is a few dicts so the example runs as is; swap in your own calls (sync functions run in a
worker thread, so a blocking database driver is fine).
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass
from typing import Annotated, Literal

from phonebridge import Agent, CallContext
from phonebridge.errors import ToolError

agent = Agent(
    instructions=(
        "You are the friendly front desk of Luigi's pizzeria in Springfield. Keep answers short: this is a "
        "phone call. Use get_menu for dishes and prices, never invent them. Use order_status when a caller "
        "asks about an order, book_table for reservations (confirm day, time, name and party size before "
        "booking). If the caller wants a person, or you cannot help, use transfer_call. When the caller is "
        "done, say goodbye and use end_call."
    ),
    greeting="Greet the caller as Luigi's pizzeria and ask how you can help.",
    voice="Kore",
    transfer_to="+15550100199",  # the restaurant's landline; a sip: URI works too
    tool_timeout_s=8.0,
)


class Size(enum.Enum):
    SMALL = "small"
    LARGE = "large"


@dataclass(frozen=True)
class Dish:
    name: str
    small: float
    large: float
    vegetarian: bool


MENU = (
    Dish("margherita", 9.0, 13.0, True),
    Dish("diavola", 11.0, 15.5, False),
    Dish("quattro formaggi", 11.5, 16.0, True),
    Dish("prosciutto e funghi", 12.0, 16.5, False),
)
ORDERS = {"A-1042": "out for delivery, about 10 minutes away", "A-1043": "in the oven"}
OPENING = datetime.time(12, 0), datetime.time(22, 30)
MAX_PARTY = 12


@agent.tool
def get_menu(vegetarian_only: bool = False) -> list[Dish]:
    """The pizzas on the menu with their small and large prices in US dollars.

    Args:
        vegetarian_only: only list vegetarian pizzas
    """
    return [dish for dish in MENU if dish.vegetarian or not vegetarian_only]


@agent.tool
def price(pizza: str, size: Size = Size.LARGE, quantity: Annotated[int, "how many pizzas"] = 1) -> dict[str, object]:
    """The total price of some pizzas of one kind and size."""
    dish = next((d for d in MENU if d.name == pizza.strip().lower()), None)
    if dish is None:
        raise ToolError(f"There is no pizza called {pizza!r} on the menu.")
    each = dish.small if size is Size.SMALL else dish.large
    return {"pizza": dish.name, "size": size, "quantity": quantity, "total_usd": round(each * quantity, 2)}


@agent.tool(timeout_s=4.0)
async def order_status(order_id: Annotated[str, "the order number, like A-1042"]) -> str:
    """Where an order is: being made, in the oven, or out for delivery."""
    status = ORDERS.get(order_id.strip().upper())
    if status is None:
        raise ToolError(f"No order {order_id} was found. Ask the caller to check the number on their receipt.")
    return status


@agent.tool
def book_table(
    call: CallContext,
    name: str,
    day: datetime.date,
    time: Annotated[str, "24-hour time, HH:MM"],
    party_size: Annotated[int, "number of guests"],
    seating: Literal["inside", "patio"] = "inside",
) -> dict[str, object]:
    """Reserve a table. Confirm every detail with the caller before calling this."""
    try:
        at = datetime.time.fromisoformat(time)
    except ValueError:
        raise ToolError(f"{time!r} is not a time; ask for it as hours and minutes.") from None
    if not OPENING[0] <= at <= OPENING[1]:
        raise ToolError("We take bookings between 12:00 and 22:30 only.")
    if not 1 <= party_size <= MAX_PARTY:
        raise ToolError(f"Tables are for 1 to {MAX_PARTY} guests; larger groups should speak to the manager.")
    bookings = call.state.setdefault("bookings", [])
    reference = f"B-{len(bookings) + 1:03d}"
    bookings.append(reference)
    return {"reference": reference, "name": name, "day": day, "time": time, "guests": party_size,
            "seating": seating, "phone": call.from_number}
