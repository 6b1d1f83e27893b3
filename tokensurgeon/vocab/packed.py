"""Per-id token strings and bytes packed into one blob with offsets.

A tuple of 262k small ``str`` or ``bytes`` objects (Gemma 3's vocabulary) takes ~35 MB, and worse: the
objects are allocated among the tokenizer's own transient ones, so the allocator's arenas they sit in
cannot go back to the system when the tokenizer is dropped (~150 MB of a P1 transplant's peak). One blob
and an offset array are three allocations whatever the vocabulary's size.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import overload


class Packed(Sequence):
    """A read-only sequence of ``bytes`` (or ``str``, stored as UTF-8) values, any of them None.

    >>> tokens = Packed(["a", None, "▁the"], text=True)
    >>> tokens[2], tokens[1], len(tokens), tokens.index("a")
    ('▁the', None, 3, 0)
    """

    __slots__ = ("_blob", "_ends", "_missing", "_text")

    def __init__(self, items: Iterable[bytes | str | None], *, text: bool = False) -> None:
        parts: list[bytes] = []
        ends, missing, end = array("q"), bytearray(), 0
        for item in items:
            raw = b"" if item is None else item.encode("utf-8") if text else bytes(item)
            parts.append(raw)
            end += len(raw)
            ends.append(end)
            missing.append(item is None)
        self._blob, self._ends, self._missing, self._text = b"".join(parts), ends, bytes(missing), text

    def __len__(self) -> int:
        return len(self._ends)

    @overload
    def __getitem__(self, index: int) -> bytes | str | None: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[bytes | str | None, ...]: ...
    def __getitem__(self, index):
        ends = self._ends
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(ends))))
        if index < 0:
            index += len(ends)
        if not 0 <= index < len(ends):
            raise IndexError(f"index {index} out of range for {len(ends)} entries")
        if self._missing[index]:
            return None
        raw = self._blob[ends[index - 1] if index else 0:ends[index]]
        return raw.decode("utf-8") if self._text else raw

    def __iter__(self) -> Iterator[bytes | str | None]:
        """One pass over the blob (not __getitem__ per id: a vocabulary is walked whole several times a run)."""
        blob, text, start = self._blob, self._text, 0
        for end, missing in zip(self._ends, self._missing):
            yield None if missing else blob[start:end].decode("utf-8") if text else blob[start:end]
            start = end

    def present(self) -> list[int]:
        """Indices of the entries that are not None, from the flags alone (nothing decoded)."""
        return [index for index, missing in enumerate(self._missing) if not missing]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Packed):
            return (self._text, self._missing, self._ends, self._blob) == (
                other._text, other._missing, other._ends, other._blob)
        return isinstance(other, Sequence) and len(self) == len(other) and all(a == b for a, b in zip(self, other))

    def __repr__(self) -> str:
        return f"Packed({len(self)} {'strings' if self._text else 'bytes'})"
