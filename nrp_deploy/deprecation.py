"""Deprecated aliases for names that moved: a module ``__getattr__`` that still hands each one out, with a
``DeprecationWarning`` naming its new place, so code written against the old place keeps working for now.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any


def moved_names(old_module: str, homes: Mapping[str, ModuleType] | ModuleType) -> Callable[[str], Any]:
    """``__getattr__`` for ``old_module``: ``homes`` maps each moved name to the module it lives in now (one
    module: every name it has). Unknown names raise ``AttributeError`` as usual."""

    def __getattr__(name: str) -> Any:
        home = homes if isinstance(homes, ModuleType) else homes.get(name)
        if home is None or not hasattr(home, name):
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        warnings.warn(
            f"{old_module}.{name} moved to {home.__name__}.{name}; import it from there "
            f"({old_module} keeps it only for a while)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(home, name)

    return __getattr__
