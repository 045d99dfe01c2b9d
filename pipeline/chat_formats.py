"""Chat formats as data: how turns, their ends and the video are spelled in token text.

A format is a few strings, not code, so a tokenizer family is added by writing its strings (a
built-in name, or a JSON file with the fields of ChatFormat):

- ``longshot``: ``<|user|> content <|end|>`` ... with ``<|vision|>`` placeholders (the template
  longshot's demo tokenizers are trained with);
- ``qwen``: ChatML, ``<|im_start|>user\\n content <|im_end|>\\n`` ..., the video as
  ``<|vision_start|> <|video_pad|> x N <|vision_end|>`` (Qwen2/2.5/3-VL).

Every turn is ``role_open[role] + content + turn_close + after_close``. Training targets are the
assistant's content and its ``turn_close`` (the model must learn to stop); role openings,
``after_close``, system and user text are never targets. The video sits in the first user turn:
``vision_open`` and ``vision_close`` are text of that turn, and the placeholders (inserted by
the loader, one per vision token) go between them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT_FILE = "chat_format.json"  # a format beside a tokenizer.json is that tokenizer's default


class ChatFormatError(ValueError):
    """A chat format that cannot be used: unknown name, unreadable file, missing fields."""


@dataclass(frozen=True)
class ChatFormat:
    name: str
    role_open: dict[str, str]  # system / user / assistant -> the text that opens its turn
    turn_close: str  # closes every turn; a target after assistant content
    placeholder: str  # the vision placeholder token (one per vision token)
    pad: str  # padding token
    after_close: str = ""  # text after turn_close, never a target (ChatML's newline)
    vision_open: str = ""
    vision_close: str = ""
    extra_special: tuple[str, ...] = field(default=())  # other tokens the tokenizer must have

    def __post_init__(self):
        missing = {"system", "user", "assistant"} - set(self.role_open)
        if missing:
            raise ChatFormatError(f"chat format {self.name!r}: no opening for roles {sorted(missing)}")

    @property
    def special_tokens(self) -> list[str]:
        """Tokens that must be single ids of the tokenizer (in a stable order)."""
        words = [*self.role_open.values(), self.turn_close, self.vision_open, self.vision_close,
                 self.placeholder, self.pad, *self.extra_special]
        out: list[str] = []
        for word in words:
            for token in _special_parts(word):
                if token not in out:
                    out.append(token)
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def _special_parts(text: str) -> list[str]:
    """The <|...|> tokens within a piece of template text."""
    out, rest = [], text
    while "<|" in rest and "|>" in rest[rest.index("<|"):]:
        start = rest.index("<|")
        end = rest.index("|>", start) + 2
        out.append(rest[start:end])
        rest = rest[end:]
    return out


LONGSHOT = ChatFormat(
    name="longshot",
    role_open={"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"},
    turn_close="<|end|>", placeholder="<|vision|>", pad="<|pad|>")

QWEN = ChatFormat(
    name="qwen",
    role_open={"system": "<|im_start|>system\n", "user": "<|im_start|>user\n",
               "assistant": "<|im_start|>assistant\n"},
    turn_close="<|im_end|>", after_close="\n", placeholder="<|video_pad|>", pad="<|endoftext|>",
    vision_open="<|vision_start|>", vision_close="<|vision_end|>", extra_special=("<|image_pad|>",))

FORMATS = {f.name: f for f in (LONGSHOT, QWEN)}


def chat_format(spec: str | None = None, tokenizer_path: str | Path | None = None) -> ChatFormat:
    """A built-in format by name, or one read from a JSON file; with no spec, the format file
    beside the tokenizer if there is one, else ``longshot``."""
    if spec is None:
        beside = Path(tokenizer_path).parent / FORMAT_FILE if tokenizer_path else None
        if beside is None or not beside.is_file():
            return LONGSHOT
        spec = str(beside)
    if spec in FORMATS:
        return FORMATS[spec]
    path = Path(spec)
    if not path.is_file():
        raise ChatFormatError(f"chat format {spec!r}: neither a built-in ({', '.join(FORMATS)}) nor a file")
    try:
        fields = json.loads(path.read_text())
        fields["extra_special"] = tuple(fields.get("extra_special", ()))
        return ChatFormat(**fields)
    except (json.JSONDecodeError, TypeError) as exc:
        raise ChatFormatError(f"{path}: not a chat format ({exc})") from None
