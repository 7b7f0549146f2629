"""``Bits``: a growable bitmap over row positions, a bit a row.

Its own module because more than one part keeps rows this way: the checkpoint (which rows were sent and
which finished) and the summary (which rows the first variant passed, to count disagreements). Neither
should have to import the other for it.
"""

from __future__ import annotations

__all__ = ["Bits"]


class Bits:
    """A growable bitmap over row positions."""

    __slots__ = ("_bytes",)

    def __init__(self) -> None:
        self._bytes = bytearray()

    def set(self, index: int) -> None:
        byte = index >> 3
        if byte >= len(self._bytes):
            self._bytes.extend(bytes(max(byte + 1 - len(self._bytes), len(self._bytes))))
        self._bytes[byte] |= 1 << (index & 7)

    def clear(self, index: int) -> None:
        byte = index >> 3
        if byte < len(self._bytes):
            self._bytes[byte] &= ~(1 << (index & 7)) & 0xFF

    def __contains__(self, index: int) -> bool:
        byte = index >> 3
        return byte < len(self._bytes) and bool(self._bytes[byte] & (1 << (index & 7)))

    def count(self) -> int:
        return sum(bin(b).count("1") for b in self._bytes if b)

    def count_and_not(self, other: Bits) -> int:
        """How many positions are set here but not in ``other``."""
        total = 0
        theirs = other._bytes
        for i, b in enumerate(self._bytes):
            if b:
                total += bin(b & ~(theirs[i] if i < len(theirs) else 0) & 0xFF).count("1")
        return total
