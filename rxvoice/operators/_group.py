"""The ``group_by_user`` operator: one group per user, ended when the user leaves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import reactivex
from reactivex import GroupedObservable, Observable
from reactivex import operators as ops

from rxvoice.events import ClientDisconnect
from rxvoice.operators._common import UserItem

_T = TypeVar("_T", bound=UserItem)


def group_by_user_(
    leaves: Observable[ClientDisconnect] | None,
    include_unknown: bool,
) -> Callable[[Observable[_T]], Observable[GroupedObservable[str | None, _T]]]:
    def user_of(item: _T) -> str | None:
        return item.user_id

    def known(item: _T) -> bool:
        return item.user_id is not None

    def lifetime(group: GroupedObservable[str | None, Any]) -> Observable[Any]:
        if leaves is None or group.key is None:
            return reactivex.never()
        key = group.key

        def left(leave: ClientDisconnect) -> bool:
            return leave.user_id == key

        # RxPY's group_by_until ends the group at the first item of this stream
        # (a new group starts if the user comes back), but also when it
        # completes or errors: once ``leaves`` has ended (a Connection closing
        # completes its streams), departures can no longer end groups, and
        # the audio must still flow.
        return reactivex.concat(
            leaves.pipe(ops.filter(left), ops.take(1), ops.catch(reactivex.empty())),
            reactivex.never(),
        )

    def operator(source: Observable[_T]) -> Observable[GroupedObservable[str | None, _T]]:
        items = source if include_unknown else source.pipe(ops.filter(known))
        grouped: Observable[GroupedObservable[str | None, _T]] = items.pipe(
            ops.group_by_until(user_of, None, lifetime)
        )
        return grouped

    return operator


__all__ = ["group_by_user_"]
