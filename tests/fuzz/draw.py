"""Turning bytes into choices: the one source of randomness every generator draws from.

libFuzzer (atheris) mutates the bytes and sees which choices reach new code; the seeded pass of
``make test`` feeds bytes from a seeded ``random.Random``. Once the bytes run out every draw
returns its smallest choice, so any byte string decodes to some input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

#: Characters that tend to break parsers, mixed into generated text.
ODD_CHARS = "\x00\n\r\t \"'\\/:;=,#%$[]{}.-_é\u2028\ufeff\U0001d11e"
PRINTABLE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


class Draw:
    """Choices decoded from ``data``, consumed front to back."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> int:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return int.from_bytes(chunk, "little") if chunk else 0

    def int(self, low: int, high: int) -> int:
        """An integer in [low, high]."""
        span = high - low
        if span <= 0:
            return low
        width = (span.bit_length() + 7) // 8
        return low + self._take(width) % (span + 1)

    def bool(self, percent_true: int = 50) -> bool:
        return self.int(0, 99) < percent_true

    def choice(self, options: Sequence[T]) -> T:
        return options[self.int(0, len(options) - 1)]

    def bytes(self, max_len: int) -> bytes:
        n = self.int(0, max_len)
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk

    def text(self, max_len: int, alphabet: str = PRINTABLE + ODD_CHARS) -> str:
        return "".join(self.choice(alphabet) for _ in range(self.int(0, max_len)))

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.data)
