"""The ``KEY.json`` member: a sample's metadata as canonical UTF-8 JSON (sorted keys).

Canonical so that the same metadata always gives the same bytes (shards are byte-for-byte
reproducible). numpy scalars and arrays from the pipeline are turned into plain JSON values.
"""

import json

import numpy as np

from shards.errors import CorruptShard, InvalidSample

# Fields the writer adds; a caller may not set ``frames``. ``text_tokens`` may be passed
# only if it equals the number of token ids.
FRAMES_FIELD = "frames"
TEXT_TOKENS_FIELD = "text_tokens"


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON serializable")


def encode_meta(meta: dict, what: str) -> bytes:
    """Canonical JSON bytes of ``meta``; ``what`` names the sample in errors."""
    if not isinstance(meta, dict):
        raise InvalidSample(f"{what}: meta must be a dict, got {type(meta).__name__}")
    bad_keys = [k for k in meta if not isinstance(k, str)]
    if bad_keys:
        raise InvalidSample(f"{what}: meta keys must be strings, got {bad_keys!r}")
    try:
        text = json.dumps(
            meta, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_plain
        )
    except (TypeError, ValueError) as e:
        raise InvalidSample(f"{what}: meta cannot be stored as JSON: {e}") from e
    return text.encode("utf-8")


def normalize_meta(meta: dict, what: str) -> dict:
    """``meta`` as it will read back from the shard (plain JSON types)."""
    return json.loads(encode_meta(meta, what))


def decode_meta(data: bytes, what: str) -> dict:
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptShard(f"{what}: metadata is not valid UTF-8 JSON: {e}") from e
    if not isinstance(meta, dict):
        raise CorruptShard(f"{what}: metadata is a JSON {type(meta).__name__}, not an object")
    return meta
