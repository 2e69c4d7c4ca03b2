"""Fault injection for the sandbox: a seeded, deterministic misbehaving network.

:class:`Faults` holds the knobs (all off by default); :class:`FaultInjector`
applies them with its own :class:`random.Random`, so the same seed and the
same traffic give the same faults. The relay passes every datagram it sends
to a client through :meth:`FaultInjector.plan`, which says what actually goes
out and when; the voice gateway asks :meth:`FaultInjector.drop_heartbeat_ack`
before answering a heartbeat.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from rxvoice.errors import InvalidArgument

__all__ = ["FaultInjector", "Faults"]


@dataclass(frozen=True, slots=True)
class Faults:
    """What the sandbox breaks on purpose. Probabilities are in ``0.0 .. 1.0``.

    The network faults apply to each datagram the relay sends to a client.

    Attributes:
        loss: Probability that a datagram is dropped.
        duplicate: Probability that a datagram is sent twice.
        reorder: Probability that a datagram is held back ``reorder_delay``
            seconds, so that the following ones overtake it.
        reorder_delay: How long a reordered datagram is held, in seconds.
        jitter: Extra delay, uniform in ``0 .. jitter`` seconds, for every datagram.
        corrupt: Probability that one byte of a datagram is flipped (the client's
            AEAD check must then fail).
        truncate: Probability that a datagram is cut at a random length.
        garbage: Probability that a random junk datagram is sent before a datagram.
        drop_heartbeat_acks: Probability that a voice heartbeat (op 3) gets no
            op 6 answer.
        speaking_delay: Seconds by which a sender's op 5 reaches the other
            clients late, so its first packets arrive before receivers can map
            its SSRC to a user (op 5 and RTP race in real calls).
        seed: Seed of the injector's random generator.

    Raises:
        InvalidArgument: If a probability is outside ``0 .. 1`` or a delay
            outside ``0 .. 10`` seconds.
    """

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.045
    jitter: float = 0.0
    corrupt: float = 0.0
    truncate: float = 0.0
    garbage: float = 0.0
    drop_heartbeat_acks: float = 0.0
    speaking_delay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "seed":
                continue
            if f.name in ("jitter", "reorder_delay", "speaking_delay"):
                if not 0.0 <= value <= 10.0:
                    raise InvalidArgument(f"Faults.{f.name} must be 0..10 seconds, got {value}")
            elif not 0.0 <= value <= 1.0:
                raise InvalidArgument(f"Faults.{f.name} must be a probability 0..1, got {value}")

    @property
    def network_active(self) -> bool:
        """Whether any datagram fault is switched on."""
        return any(
            (
                self.loss,
                self.duplicate,
                self.reorder,
                self.jitter,
                self.corrupt,
                self.truncate,
                self.garbage,
            )
        )


class FaultInjector:
    """Applies :class:`Faults` deterministically.

    Args:
        faults: The knobs; :meth:`configure` swaps them later.

    Attributes:
        counters: How many times each fault fired, by name.
    """

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self._rng = random.Random(self.faults.seed)  # noqa: S311 - test faults, not crypto
        self.counters: dict[str, int] = {}

    def configure(self, faults: Faults) -> None:
        """Use new knobs and reseed the generator from ``faults.seed``."""
        self.faults = faults
        self._rng = random.Random(faults.seed)  # noqa: S311

    def _hit(self, probability: float, name: str) -> bool:
        if probability and self._rng.random() < probability:
            self.counters[name] = self.counters.get(name, 0) + 1
            return True
        return False

    def drop_heartbeat_ack(self) -> bool:
        """Return whether to leave this heartbeat unanswered."""
        return self._hit(self.faults.drop_heartbeat_acks, "dropped_heartbeat_acks")

    def plan(self, datagram: bytes) -> list[tuple[float, bytes]]:
        """Decide what to send instead of ``datagram``.

        Args:
            datagram: The datagram the relay wants to send.

        Returns:
            ``(delay_seconds, bytes)`` pairs to send, in order; empty when the
            datagram is lost. Without faults: ``[(0.0, datagram)]``.
        """
        f = self.faults
        if not f.network_active:
            return [(0.0, datagram)]
        rng = self._rng
        out: list[tuple[float, bytes]] = []
        if self._hit(f.garbage, "garbage"):
            out.append((0.0, rng.randbytes(rng.randint(1, 200))))
        if self._hit(f.loss, "lost"):
            return out
        delay = rng.uniform(0.0, f.jitter) if f.jitter else 0.0
        if self._hit(f.reorder, "reordered"):
            delay += f.reorder_delay
        data = datagram
        if self._hit(f.corrupt, "corrupted"):
            buf = bytearray(data)
            # Past the 12-byte header: the ciphertext, tag or nonce, so AEAD must notice.
            index = rng.randrange(min(12, len(buf) - 1), len(buf))
            buf[index] ^= 1 << rng.randrange(8)
            data = bytes(buf)
        if self._hit(f.truncate, "truncated"):
            data = data[: rng.randrange(len(data))]
        out.append((delay, data))
        if self._hit(f.duplicate, "duplicated"):
            out.append((delay, data))
        return out
