"""The ``KEY.text.npy`` member: token ids as a 1-D int32 array in ``np.save`` format.

``.npy`` because webdataset and any numpy user can read it without our code; int32 because
vocabularies fit and it halves the bytes of int64.
"""

import io

import numpy as np

from shards.errors import CorruptShard, InvalidSample

TEXT_DTYPE = np.dtype("<i4")
_INT32 = np.iinfo(np.int32)


def encode_text(text_ids: object, what: str) -> tuple[bytes, int]:
    """``.npy`` bytes of the token ids and their count; ``what`` names the sample in errors."""
    ids = np.asarray(text_ids)
    if ids.ndim != 1:
        raise InvalidSample(f"{what}: text_ids must be 1-D, got shape {ids.shape}")
    if ids.dtype.kind not in "iu" and not (ids.size == 0 and ids.dtype.kind == "f"):
        raise InvalidSample(f"{what}: text_ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < _INT32.min or ids.max() > _INT32.max):
        raise InvalidSample(f"{what}: text_ids must fit int32, got range [{ids.min()}, {ids.max()}]")
    buffer = io.BytesIO()
    np.save(buffer, ids.astype(TEXT_DTYPE), allow_pickle=False)
    return buffer.getvalue(), int(ids.size)


def decode_text(data: bytes, what: str) -> np.ndarray:
    try:
        ids = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CorruptShard(f"{what}: text member is not a valid .npy array: {e}") from e
    if ids.ndim != 1 or ids.dtype != TEXT_DTYPE:
        raise CorruptShard(f"{what}: text member holds {ids.dtype} of shape {ids.shape}, expected 1-D int32")
    return ids
