"""Sample ids: what makes one safe, and how a file stem becomes one.

An id ends up in tar member names, Parquet keys and file names of later stages, so it must not be
able to escape a folder (``/``, ``..``), must survive every filesystem and tar implementation
(ASCII letters, digits, ``_`` and ``-``; at most 120 characters) and must not contain ``__``,
which later stages reserve to join an id with a segment number (``ID__0003``).
"""

from __future__ import annotations

import re

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,120}")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_-]+")
SEGMENT_SEPARATOR = "__"


def is_safe_id(value: str) -> bool:
    """True when ``value`` can be used as a sample id as it is."""
    return bool(_SAFE_ID.fullmatch(value)) and SEGMENT_SEPARATOR not in value


def sanitize_stem(stem: str) -> str:
    """Turn a file stem into an id candidate: every run of other characters becomes one ``-``.

    The result still has to pass :func:`is_safe_id` (it can be empty, too long, or contain ``__``);
    the caller reports those stems as errors instead of inventing an id for them.
    """
    return _UNSAFE_RUN.sub("-", stem).strip("-")
