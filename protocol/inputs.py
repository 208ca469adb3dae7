"""What every request body must be so both databases can store it and JSON can carry it back.

PostgreSQL rejects NUL characters in text and the NaN/Infinity tokens Python's ``json`` accepts;
pydantic refuses to serialize values nested past ~250 levels (a job whose options nest that deep
would break every claim that leases it). So request bodies are checked once, at validation, and
refused with 422 on SQLite and PostgreSQL alike, instead of failing later in the store or on the
way out to a worker.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

MAX_DEPTH = 64


def check_json_value(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise ValueError when ``value`` holds a NUL character, NaN/Infinity or nests too deep."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:  # iterative: a recursive walk would itself overflow on the inputs it must refuse
        item, depth, where = stack.pop()
        if depth > max_depth:
            raise ValueError(f"{where or 'the value'} nests deeper than {max_depth} levels")
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError(f"{where or 'a string'} contains a NUL character")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{where or 'a number'} is NaN or infinite")
        elif isinstance(item, dict):
            for key, sub in item.items():
                name = f"{where}.{key}" if where else str(key)
                if isinstance(key, str) and "\x00" in key:
                    raise ValueError(f"a key of {where or 'the object'} contains a NUL character")
                stack.append((sub, depth + 1, name))
        elif isinstance(item, list | tuple):
            stack.extend((sub, depth + 1, f"{where}[{n}]") for n, sub in enumerate(item))


class CleanBody(BaseModel):
    """A request body: unknown fields refused, and every value storable (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        check_json_value(data)
        return data
