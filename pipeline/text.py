"""Text of a sample as token ids, with the loss mask and the place where the video goes.

The chat format (pipeline/chat_formats.py: ``longshot`` by default, ``qwen`` for ChatML
tokenizers) is applied piece by piece: every role opening, content and turn end is encoded on
its own and the ids concatenated, so that the token layout (and so the loss mask) does not
depend on how a tokenizer happens to merge text across template boundaries. The loss is taken
on assistant content and on the turn end that closes it (the model must learn to stop); never
on role openings, system or user text. The ``<video>`` marker is cut out of the text: the
format's ``vision_open`` / ``vision_close`` take its place, and ``vision_at`` records where the
video's placeholder tokens (inserted by the loader) go between them. A layout that marks each
temporal group instead (pipeline/video_layout.py) leaves the markers to the groups' own text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pipeline.chat_formats import LONGSHOT, ChatFormat
from pipeline.errors import TextError
from pipeline.turns import VIDEO_MARKER, TurnsError, first_user_turn
from pipeline.video_layout import BLOCK, VideoLayout

# The ``longshot`` format's tokens, kept by name for its callers.
ROLE_TOKENS = dict(LONGSHOT.role_open)
END_TOKEN = LONGSHOT.turn_close
VISION_TOKEN = LONGSHOT.placeholder
PAD_TOKEN = LONGSHOT.pad
SPECIAL_TOKENS = LONGSHOT.special_tokens


@dataclass(frozen=True)
class TokenizedText:
    ids: np.ndarray  # int32
    loss_mask: np.ndarray  # bool, same length as ids
    vision_at: int  # vision tokens go before ids[vision_at]

    def __len__(self) -> int:
        return len(self.ids)


def load_tokenizer(path, fmt: ChatFormat = LONGSHOT) -> Tokenizer:
    """Load a HuggingFace ``tokenizer.json`` that has the chat format's special tokens."""
    path = str(path)
    if not Path(path).is_file():
        raise TextError(path, "file not found" if not Path(path).exists() else "not a regular file")
    try:
        tokenizer = Tokenizer.from_file(path)
    except PermissionError:
        raise TextError(path, "permission denied") from None
    except Exception as exc:  # noqa: BLE001 -- the Rust side raises plain Exception for bad JSON or schema
        raise TextError(path, "not a tokenizer file", detail=str(exc)) from None
    missing = [t for t in fmt.special_tokens if tokenizer.token_to_id(t) is None]
    if missing:
        raise TextError(path, f"missing special tokens of chat format {fmt.name!r}", detail=", ".join(missing))
    return tokenizer


def tokenize_turns(tokenizer: Tokenizer, turns: list[dict], *, input: str = "<turns>",
                   id: str | None = None, fmt: ChatFormat = LONGSHOT,
                   layout: VideoLayout = BLOCK) -> TokenizedText:
    """Apply the chat format to normalized turns (see :mod:`pipeline.turns`); with a per-group
    ``layout`` the video's markers are left out (the groups' text carries them)."""
    try:
        video_turn = first_user_turn(turns)
    except TurnsError as err:
        raise TextError(input, err.reason, id=id) from None
    special = fmt.special_tokens
    ids: list[int] = []
    mask: list[bool] = []

    def put(text: str, target: bool) -> None:
        ids.extend(encode_text(tokenizer, text))
        mask.extend([target] * (len(ids) - len(mask)))

    vision_at = -1
    for i, turn in enumerate(turns):
        role, content = turn["role"], turn["content"]
        if any(token in content for token in special):
            # the tokenizer would turn these into real template tokens: a caption could fake a turn
            raise TextError(input, "special token in text", id=id)
        trained = role == "assistant"
        put(fmt.role_open[role], False)
        before, marker, after = content.partition(VIDEO_MARKER)
        if i == video_turn and not marker:
            before, after = "", content  # no marker: the video opens the turn
        put(before, trained)
        if i == video_turn:
            markers = not layout.per_group
            put(fmt.vision_open if markers else "", False)
            vision_at = len(ids)
            put(fmt.vision_close if markers else "", False)
        put(after, trained)
        put(fmt.turn_close, trained)
        put(fmt.after_close, False)
    return TokenizedText(np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=bool), vision_at)


def train_tokenizer(texts, path, vocab_size: int = 512, fmt: ChatFormat = LONGSHOT) -> Tokenizer:
    """Train a small byte-level BPE tokenizer with the format's special tokens; saves it to ``path``.

    Byte-level means every string round-trips through encode/decode exactly. For tests and demos.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=fmt.special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    tokenizer.save(str(path))
    return tokenizer


def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids of a piece of text on its own (no special tokens added)."""
    return tokenizer.encode(text, add_special_tokens=False).ids if text else []

