"""Needles: a random 6-digit code tied to a random name, the sentence that states it, the
question that asks for it and the answer, as token ids of a chat format.

Why names and codes: the code cannot be guessed (10^6 values, none of them in the haystack's
real text) and the name ties it to the question, so a right answer shows that the model found
the sentence. Everything is drawn from a numpy Generator: the caller's seed makes it repeatable.
Every piece is encoded on its own, as pipeline/text.py does for turns, so the code's tokens in
the needle are exactly the answer's tokens whatever the tokenizer merges across boundaries.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIRST = ("Alice", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas",
         "Keiko", "Lars", "Maya", "Nikhil", "Olga", "Pablo", "Quinn", "Rosa", "Sven", "Tariq",
         "Uma", "Viktor", "Wen", "Ximena", "Yusuf", "Zora")
LAST = ("Moreau", "Okafor", "Lindqvist", "Tanaka", "Rossi", "Novak", "Haddad", "Fischer", "Silva",
        "Kowalski", "Brennan", "Petrov", "Nakamura", "Duarte", "Achebe", "Varga", "Castillo", "Berg")
CODE_DIGITS = 6


@dataclass(frozen=True)
class Needle:
    name: str
    code: str  # CODE_DIGITS decimal digits, the answer

    @property
    def fact(self) -> str:
        return f"The secret code of {self.name} is {self.code}."

    @property
    def question(self) -> str:
        return f"What is the secret code of {self.name}?"


def make_needle(rng: np.random.Generator) -> Needle:
    name = f"{FIRST[rng.integers(len(FIRST))]} {LAST[rng.integers(len(LAST))]}"
    code = "".join(str(d) for d in rng.integers(0, 10, size=CODE_DIGITS))
    return Needle(name, code)


@dataclass(frozen=True)
class NeedleTokens:
    """Token ids of one needle in a chat format.

    The document is ``open_turn`` + haystack (with ``fact`` inside) + ``ask`` + ``answer`` +
    ``close``: ``ask`` ends the user turn and opens the assistant's; the answer is the code.
    """

    open_turn: np.ndarray
    fact: np.ndarray
    ask: np.ndarray
    answer: np.ndarray
    close: np.ndarray

    @property
    def fixed_tokens(self) -> int:
        """Tokens of the document that are not haystack."""
        return sum(a.size for a in (self.open_turn, self.fact, self.ask, self.answer, self.close))


def needle_tokens(needle: Needle, tokenizer, fmt) -> NeedleTokens:
    """``tokenizer``: a `tokenizers.Tokenizer`; ``fmt``: a pipeline.chat_formats.ChatFormat."""

    def enc(*texts: str) -> np.ndarray:
        ids = [i for t in texts if t for i in tokenizer.encode(t, add_special_tokens=False).ids]
        return np.asarray(ids, dtype=np.int64)

    fact_head = needle.fact[: -len(needle.code) - 1]  # "The secret code of NAME is "
    return NeedleTokens(
        open_turn=enc(fmt.role_open["user"]),
        fact=np.concatenate([enc("\n", fact_head), enc(needle.code), enc(".\n")]),
        ask=enc("\n", needle.question, fmt.turn_close, fmt.after_close, fmt.role_open["assistant"]),
        answer=enc(needle.code),
        close=enc(fmt.turn_close),
    )
