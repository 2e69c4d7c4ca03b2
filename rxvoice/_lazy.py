"""Package names resolved on first use (PEP 562), to keep imports light."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any


def lazy_getattr(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """Make a module ``__getattr__`` that imports ``where[name]`` on first access.

    Args:
        package: The package's ``__name__``.
        where: Each lazy name to the module that defines it.

    Returns:
        The ``__getattr__`` function; it caches each value in the package.
    """

    def resolve(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return resolve


def lazy_dir(package: str, where: Mapping[str, str]) -> Callable[[], list[str]]:
    """Make a module ``__dir__`` that lists the public names, the lazy ones included.

    Without it, ``dir(package)`` and tab completion miss every lazy name not
    used yet, and show the helpers of the ``__init__`` (``TYPE_CHECKING``,
    ``annotations``...) instead.

    Args:
        package: The package's ``__name__``.
        where: The same table as :func:`lazy_getattr`'s.

    Returns:
        The ``__dir__`` function: ``__all__``, the lazy names, the submodules
        imported so far and the dunder attributes, sorted.
    """

    def names() -> list[str]:
        module = sys.modules[package]
        found = vars(module)
        return sorted(
            {
                *getattr(module, "__all__", ()),
                *where,
                *(
                    name
                    for name, value in found.items()
                    if name.startswith("__")
                    or (isinstance(value, ModuleType) and not name.startswith("_"))
                ),
            }
        )

    return names
