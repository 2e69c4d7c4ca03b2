"""rxvoice: Discord voice (gateway v8, DAVE end-to-end encryption) as reactive streams."""

from __future__ import annotations

from rxvoice import errors
from rxvoice.secret import Secret

__version__ = "0.1.0"

__all__ = ["Secret", "__version__", "errors"]
