"""Names and byte layout of the shard format: the contract shared by writer, reader and verify.

A shard is a plain tar. Each sample KEY has three members, written in this order:
``KEY.frames.zst`` (zstd frames) or ``KEY.frames.mjpeg`` (JPEG frames end to end, the MJPEG
stream FFmpeg reads), ``KEY.json`` (metadata) and ``KEY.text.npy`` (token ids). The frames
member's extension names its codec, which the metadata and the index also record per sample.
Frames come first because the metadata records their final shape, known only once the
frames have been streamed.

Tar headers are GNU format with fixed ownership, mode and mtime, so the same samples always
give the same bytes; GNU (not USTAR) because a 160-character key plus ``.frames.zst`` does not
fit USTAR's 100-byte name field and because GNU encodes member sizes above 8 GiB.
"""

import re
import tarfile
from pathlib import Path

from shards.errors import InvalidKey

FORMAT_VERSION = 2  # 2: frame codec per sample (index column frames_codec); 1 still reads

# Members of one sample, in tar order, and the file extension of each.
FRAMES = "frames"
JSON = "json"
TEXT = "text"
MEMBERS: tuple[str, ...] = (FRAMES, JSON, TEXT)
MEMBER_EXTENSIONS: dict[str, str] = {FRAMES: "frames.zst", JSON: "json", TEXT: "text.npy"}
# The frames member's extension per frame codec (see ``shards.frame_codecs``).
DEFAULT_FRAME_CODEC = "zstd"
FRAMES_EXTENSIONS: dict[str, str] = {"zstd": "frames.zst", "jpeg": "frames.mjpeg"}

# Dataset folder layout.
SHARDS_DIR = "shards"
MANIFEST_FILE = "dataset.parquet"
ERRORS_FILE = "errors.parquet"
STATS_FILE = "stats.parquet"
STATS_DIR = "stats"
SHARD_PREFIX = "shard-"
TAR_SUFFIX = ".tar"
INDEX_SUFFIX = ".parquet"

KEY_MAX_LEN = 160
KEY_RULE = f"1 to {KEY_MAX_LEN} characters from A-Z, a-z, 0-9, '_' and '-'"
_KEY_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{KEY_MAX_LEN}}}")

BLOCK_SIZE = tarfile.BLOCKSIZE  # 512
RECORD_SIZE = tarfile.RECORDSIZE  # 20 blocks; the archive end is padded to a whole record
TAR_FORMAT = tarfile.GNU_FORMAT
MEMBER_MODE = 0o644


def validate_key(key: object) -> str:
    """Return ``key`` if it is a valid sample key, else raise ``InvalidKey``.

    webdataset splits a member name into key and extension at the first dot, and the key
    becomes part of a file name when a shard is extracted, so dots, slashes, non-ASCII and
    empty keys are refused.
    """
    if not isinstance(key, str):
        raise InvalidKey(f"sample key {key!r} is a {type(key).__name__}, not a str; keys must be {KEY_RULE}")
    if not _KEY_RE.fullmatch(key):
        raise InvalidKey(f"invalid sample key {key!r}: keys must be {KEY_RULE}")
    return key


def validate_shard_name(name: object) -> str:
    """Return ``name`` if it can name a shard's files (it becomes part of a path), else raise."""
    if not isinstance(name, str) or not _KEY_RE.fullmatch(name):
        raise ValueError(f"invalid shard name {name!r}: shard names must be {KEY_RULE}")
    return name


def member_name(key: str, member: str, frame_codec: str = DEFAULT_FRAME_CODEC) -> str:
    """Tar member name of one member (``frames``, ``json`` or ``text``) of sample ``key``.

    ``frame_codec`` (recorded per sample) chooses the frames member's extension.
    """
    if member == FRAMES:
        if frame_codec not in FRAMES_EXTENSIONS:
            raise ValueError(f"sample {key!r}: unknown frames codec {frame_codec!r} (known: {', '.join(FRAMES_EXTENSIONS)})")
        return f"{key}.{FRAMES_EXTENSIONS[frame_codec]}"
    return f"{key}.{MEMBER_EXTENSIONS[member]}"


def split_member_name(name: str) -> tuple[str, str]:
    """Inverse of ``member_name``: (key, member). Raises ``ValueError`` for foreign names."""
    key, dot, ext = name.partition(".")
    extensions = [(FRAMES, e) for e in FRAMES_EXTENSIONS.values()]
    extensions += [(m, e) for m, e in MEMBER_EXTENSIONS.items() if m != FRAMES]
    for member, member_ext in extensions:
        if dot and ext == member_ext:
            return key, member
    known = [e for _, e in extensions]
    raise ValueError(f"tar member {name!r} is not KEY.{{{','.join(known)}}}")


def shard_name(number: int) -> str:
    """``shard-NNNNNN``: the stem shared by a shard's tar and its index."""
    if number < 0:
        raise ValueError(f"shard number must be >= 0, got {number}")
    return f"{SHARD_PREFIX}{number:06d}"


def shard_tar_path(dataset_dir: str | Path, name: str) -> Path:
    return Path(dataset_dir) / SHARDS_DIR / f"{name}{TAR_SUFFIX}"


def index_path_for(tar_path: str | Path) -> Path:
    """The Parquet index that sits beside a shard tar: same stem, ``.parquet``."""
    tar_path = Path(tar_path)
    if tar_path.suffix != TAR_SUFFIX:
        raise ValueError(f"shard path {str(tar_path)!r} does not end in {TAR_SUFFIX}")
    return tar_path.with_suffix(INDEX_SUFFIX)


def name_from_path(path: str | Path) -> str:
    """Shard name of a file path: its file name up to the first dot.

    Works for final names (``shard-000003.tar``) and for the temporary names a job runtime
    writes before renaming (``shard-000003.tar.tmp-1234``).
    """
    return Path(path).name.split(".", 1)[0]


def member_header(name: str, size: int) -> bytes:
    """Deterministic tar header block(s) for a regular file member.

    The length depends only on ``name`` (a GNU long-name block is added above 100 bytes), never
    on ``size``, so a streamed member can get a placeholder header that is patched in place.
    """
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = MEMBER_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(format=TAR_FORMAT, encoding="utf-8", errors="strict")


def padding(size: int) -> bytes:
    """Zero bytes that bring a member of ``size`` bytes up to a whole tar block."""
    return b"\0" * (-size % BLOCK_SIZE)


def archive_end(position: int) -> bytes:
    """End-of-archive marker (two zero blocks) padded to a whole record, as tarfile writes it."""
    end = position + 2 * BLOCK_SIZE
    return b"\0" * (2 * BLOCK_SIZE + (-end % RECORD_SIZE))
