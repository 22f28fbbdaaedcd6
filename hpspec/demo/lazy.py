"""Module attributes imported on first use, so that importing a demo package stays cheap.

>>> __getattr__ = lazy_attributes(globals(), {"sqrt": "math"})  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any


def lazy_attributes(namespace: MutableMapping[str, Any], table: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__``: ``name`` from the module ``table[name]``, cached in ``namespace``."""
    module_name = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name]), name)
        namespace[name] = value
        return value

    return __getattr__
