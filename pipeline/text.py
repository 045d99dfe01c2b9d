"""Text of a sample as token ids, with the loss mask and the place where the video goes.

The chat template is fixed and built from special tokens, so that the token layout (and so the
loss mask) does not depend on how a tokenizer happens to merge text around role markers::

    <|system|> content <|end|>  <|user|> content <|end|>  <|assistant|> content <|end|> ...

Each piece of content is encoded on its own and the ids concatenated. The loss is taken on
assistant content and on the ``<|end|>`` that closes it (the model must learn to stop); never on
role tokens, system or user text. The ``<video>`` marker is cut out of the text; ``vision_at``
records where the video's tokens are to be inserted. ``<|vision|>`` is in the vocabulary as the
placeholder id for those positions and ``<|pad|>`` for padding; neither appears in ``ids``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pipeline.errors import TextError
from pipeline.turns import VIDEO_MARKER, TurnsError, first_user_turn

ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END_TOKEN = "<|end|>"
VISION_TOKEN = "<|vision|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [*ROLE_TOKENS.values(), END_TOKEN, VISION_TOKEN, PAD_TOKEN]


@dataclass(frozen=True)
class TokenizedText:
    ids: np.ndarray  # int32
    loss_mask: np.ndarray  # bool, same length as ids
    vision_at: int  # vision tokens go before ids[vision_at]

    def __len__(self) -> int:
        return len(self.ids)


def load_tokenizer(path) -> Tokenizer:
    """Load a HuggingFace ``tokenizer.json`` that has the template's special tokens."""
    path = str(path)
    if not Path(path).is_file():
        raise TextError(path, "file not found" if not Path(path).exists() else "not a regular file")
    try:
        tokenizer = Tokenizer.from_file(path)
    except PermissionError:
        raise TextError(path, "permission denied") from None
    except Exception as exc:  # noqa: BLE001 -- the Rust side raises plain Exception for bad JSON or schema
        raise TextError(path, "not a tokenizer file", detail=str(exc)) from None
    missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
    if missing:
        raise TextError(path, "missing special tokens", detail=", ".join(missing))
    return tokenizer


def tokenize_turns(tokenizer: Tokenizer, turns: list[dict], *, input: str = "<turns>",
                   id: str | None = None) -> TokenizedText:
    """Apply the chat template to normalized turns (see :mod:`pipeline.turns`)."""
    try:
        video_turn = first_user_turn(turns)
    except TurnsError as err:
        raise TextError(input, err.reason, id=id) from None
    special = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    ids: list[int] = []
    mask: list[bool] = []
    vision_at = -1
    for i, turn in enumerate(turns):
        role, content = turn["role"], turn["content"]
        if any(token in content for token in SPECIAL_TOKENS):
            # the tokenizer would turn these into real template tokens: a caption could fake a turn
            raise TextError(input, "special token in text", id=id)
        trained = role == "assistant"
        ids.append(special[ROLE_TOKENS[role]])
        mask.append(False)
        content_start = len(ids)
        before, marker, after = content.partition(VIDEO_MARKER)
        ids.extend(_encode(tokenizer, before))
        if i == video_turn:
            vision_at = len(ids) if marker else content_start
        ids.extend(_encode(tokenizer, after))
        mask.extend([trained] * (len(ids) - len(mask)))
        ids.append(special[END_TOKEN])
        mask.append(trained)
    return TokenizedText(np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=bool), vision_at)


def train_tokenizer(texts, path, vocab_size: int = 512) -> Tokenizer:
    """Train a small byte-level BPE tokenizer with the template's special tokens; saves it to ``path``.

    Byte-level means every string round-trips through encode/decode exactly. For tests and demos.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    tokenizer.save(str(path))
    return tokenizer


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids if text else []

