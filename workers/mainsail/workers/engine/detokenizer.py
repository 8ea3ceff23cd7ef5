"""`Detokenizer`: turns one request's new tokens into text deltas, honouring stop strings.

Why incremental with a window: decoding only the new token breaks multi-byte characters and
word-boundary spaces, and decoding everything each step costs O(n^2). The last few tokens are
decoded as context and only the text past them is emitted; a trailing U+FFFD (an incomplete
UTF-8 sequence) waits for the next token.

Stop strings: the emitted text never contains one. Text that could be the start of a stop
string is held back until the next tokens decide; when a stop string appears, the output is
cut just before it and the request finishes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

_CONTEXT_TOKENS = 5


@dataclass(frozen=True)
class DetokenizerState:
    """A `Detokenizer` in flight: token window, its two offsets, text not yet emitted."""

    ids: tuple[int, ...]
    prefix: int
    read: int
    pending: str


class Detokenizer:
    """Per-request incremental decoder (owned by the engine thread)."""

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        prompt_ids: Sequence[int],
        stop: Sequence[str] = (),
    ) -> None:
        self._decode = decode
        self._ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)
        self._stop = tuple(stop)
        self.text = ""
        self._emitted = 0
        self.stopped = False

    def state(self) -> DetokenizerState:
        """What continues this decoder elsewhere (a request moved with its KV): the token
        window, its offsets and the text not yet emitted."""
        return DetokenizerState(
            tuple(self._ids), self._prefix, self._read, self.text[self._emitted :]
        )

    @classmethod
    def resume(
        cls, decode: Callable[[list[int]], str], state: DetokenizerState, stop: Sequence[str]
    ) -> Detokenizer:
        """A decoder that goes on exactly where the one that gave ``state`` stopped."""
        if not 0 <= state.prefix <= state.read <= len(state.ids):
            raise ValueError("detokenizer state offsets are outside its token window")
        out = cls(decode, (), stop)
        out._ids = list(state.ids)
        out._prefix, out._read = state.prefix, state.read
        out.text = state.pending
        return out

    def add(self, token_id: int) -> None:
        """Append a token's text to ``text`` (cut at a stop string, which sets ``stopped``)."""
        if self.stopped:
            return
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return
        start = len(self.text)
        self.text += after[len(before) :]
        self._prefix, self._read = self._read, len(self._ids)
        if len(self._ids) > 4 * _CONTEXT_TOKENS:
            drop = self._prefix
            self._ids = self._ids[drop:]
            self._prefix, self._read = 0, self._read - drop
        self._find_stop(start)

    def take(self, final: bool) -> str:
        """Text not yet emitted; unless ``final``, minus a tail that may start a stop string."""
        end = len(self.text) if final or self.stopped else len(self.text) - self._held_back()
        end = max(end, self._emitted)
        delta = self.text[self._emitted : end]
        self._emitted = end
        return delta

    def _find_stop(self, start: int) -> None:
        if not self._stop:
            return
        longest = max(len(s) for s in self._stop)
        window_start = max(0, start - longest + 1)
        best: int | None = None
        for s in self._stop:
            i = self.text.find(s, window_start)
            if i != -1 and (best is None or i < best):
                best = i
        if best is not None:
            self.text = self.text[:best]
            self.stopped = True

    def _held_back(self) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        held = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self.text)), held, -1):
                if self.text.endswith(s[:n]):
                    held = n
                    break
        return held
