"""Text of a sample as a list of chat turns, whatever form it was given in.

Datasets give text either as a plain caption or as a conversation in one of two common spellings
(``{"role", "content"}`` or LLaVA's ``{"from", "value"}`` with ``human``/``gpt``). Every later stage
sees only the normalized form: ``[{"role": "user"|"assistant"|"system", "content": str}, ...]``.
"""

from __future__ import annotations

VIDEO_MARKER = "<video>"

_ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "system": "system",
}


class TurnsError(ValueError):
    """The text is unusable; ``reason`` is the short phrase for the error table."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def caption_turns(caption) -> list[dict]:
    """A plain caption: the user shows the video, the assistant answers with the caption."""
    if not isinstance(caption, str):
        raise TurnsError("text is not a string")
    if not caption.strip():
        raise TurnsError("empty text")
    return [{"role": "user", "content": VIDEO_MARKER}, {"role": "assistant", "content": caption}]


def conversation_turns(conversation) -> list[dict]:
    """A conversation, normalized; it must have a user turn and an assistant turn to train on."""
    if not isinstance(conversation, list):
        raise TurnsError("conversations is not a list")
    if not conversation:
        raise TurnsError("empty conversation")
    turns = []
    for turn in conversation:
        if not isinstance(turn, dict):
            raise TurnsError("turn is not an object")
        raw_role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if not isinstance(raw_role, str) or raw_role.lower() not in _ROLE_ALIASES:
            raise TurnsError("unknown role")
        if not isinstance(content, str):
            raise TurnsError("turn content is not a string")
        turns.append({"role": _ROLE_ALIASES[raw_role.lower()], "content": content})
    roles = {t["role"] for t in turns}
    if "user" not in roles:
        raise TurnsError("no user turn")
    if "assistant" not in roles:
        raise TurnsError("no assistant turn")
    first_user_turn(turns)
    return turns


def first_user_turn(turns: list[dict]) -> int:
    """Index of the turn the video belongs to, checking the ``<video>`` marker rules.

    A sample has one video, shown in the first user turn: at its ``<video>`` marker if there is
    one, else at the start of that turn. A marker anywhere else, or a second marker, would leave
    the position of the video ambiguous, so it is an error rather than a guess.
    """
    user_turns = [i for i, t in enumerate(turns) if t["role"] == "user"]
    if not user_turns:
        raise TurnsError("no user turn")
    first = user_turns[0]
    for i, turn in enumerate(turns):
        count = turn["content"].count(VIDEO_MARKER)
        if count and i != first:
            raise TurnsError("<video> marker outside the first user turn")
        if count > 1:
            raise TurnsError("multiple <video> markers")
    return first
