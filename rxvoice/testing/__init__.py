"""Testing tools that ship with rxvoice, above all the local Discord sandbox.

``from rxvoice.testing import Sandbox`` is resolved lazily, so importing this
package costs nothing until the sandbox is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rxvoice.testing.sandbox import Sandbox

__all__ = ["Sandbox"]


def __getattr__(name: str) -> Any:
    if name == "Sandbox":
        from rxvoice.testing.sandbox import Sandbox

        return Sandbox
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
