"""A wrapper that keeps secrets (tokens, keys) out of logs, reprs and exceptions."""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Secret"]

T = TypeVar("T")


class Secret(Generic[T]):
    """Holds a secret value; ``str`` and ``repr`` never show it.

    Read the value explicitly with :meth:`reveal` at the one place that needs it
    (for example when serialising Identify).

    Example:
        >>> token = Secret("abc")
        >>> token
        Secret('********')
        >>> token.reveal()
        'abc'
    """

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        """Return the secret value."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and bool(other._value == self._value)

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> str | tuple[object, ...]:
        # Pickling would copy the secret somewhere we cannot see; refuse it.
        raise TypeError("Secret values cannot be pickled")
