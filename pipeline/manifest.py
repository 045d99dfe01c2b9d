"""Reading the list of samples: a JSONL manifest, or a folder of videos with sidecar text.

Both readers return ``(samples, errors)`` instead of raising on the first bad entry: a dataset of a
million lines with a few broken ones must still be ingested, with the broken ones reported. Only a
problem with the manifest as a whole (it does not exist, cannot be read) raises.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ManifestError
from pipeline.ids import is_safe_id, sanitize_stem
from pipeline.turns import TurnsError, caption_turns, conversation_turns

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".flv")


@dataclass(frozen=True)
class SampleSpec:
    """One sample as the user described it: id, absolute video path, chat turns, where it came from."""

    id: str
    video: str
    turns: list[dict]
    source: str


def read_manifest(path) -> tuple[list[SampleSpec], list[ManifestError]]:
    """Read a JSONL manifest: one object per line with ``id``, ``video`` and ``text`` or ``conversations``.

    Relative video paths resolve against the manifest's folder. The file is read as bytes and each
    line decoded on its own, so a line of invalid UTF-8 is one error row, not a failed job. Blank
    lines are skipped. An id is claimed by the first line that carries it in a safe form, even if
    that line is bad for another reason: every later line with that id is a "duplicate id" error,
    so fixing an early line never changes which later lines are accepted.
    """
    manifest = Path(path)
    data = _read_whole(manifest)
    base = Path(os.path.abspath(manifest)).parent
    samples, errors, seen = [], [], set()
    for number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{manifest}:{number}"
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            samples.append(_parse_line(raw, where, base, seen))
        except ManifestError as err:
            errors.append(err)
    return samples, errors


def read_video_folder(folder) -> tuple[list[SampleSpec], list[ManifestError]]:
    """Read a folder of videos, each with ``NAME.txt`` (a caption) or ``NAME.json`` (a conversation).

    The id is the file stem with unsafe characters replaced (see :func:`pipeline.ids.sanitize_stem`);
    stems that still do not make a safe id, or that collide after sanitizing, are errors. Videos
    are listed in sorted name order so the result does not depend on the filesystem.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ManifestError(str(root), "file not found" if not root.exists() else "not a folder")
    samples, errors, seen = [], [], set()
    for video in sorted(p for p in root.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
        if video.name.startswith("."):
            continue
        try:
            samples.append(_folder_sample(video, seen))
        except ManifestError as err:
            errors.append(err)
    return samples, errors


def _read_whole(manifest: Path) -> bytes:
    try:
        return manifest.read_bytes()
    except FileNotFoundError:
        raise ManifestError(str(manifest), "file not found") from None
    except PermissionError:
        raise ManifestError(str(manifest), "permission denied") from None
    except IsADirectoryError:
        raise ManifestError(str(manifest), "not a regular file") from None


def _parse_line(raw: bytes, where: str, base: Path, seen: set) -> SampleSpec:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(where, "invalid UTF-8") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        raise ManifestError(where, "malformed JSON") from None
    if not isinstance(obj, dict):
        raise ManifestError(where, "not a JSON object")
    sample_id = _claim_id(obj, where, seen)
    video = obj.get("video")
    if video is None:
        raise ManifestError(where, "missing field video", id=sample_id)
    if not isinstance(video, str) or not video or "\x00" in video:
        raise ManifestError(where, "invalid field video", id=sample_id)
    turns = _turns_of(obj, where, sample_id)
    return SampleSpec(sample_id, os.path.normpath(base / video), turns, where)


def _claim_id(obj: dict, where: str, seen: set) -> str:
    if "id" not in obj:
        raise ManifestError(where, "missing field id")
    raw_id = obj["id"]
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    if not isinstance(raw_id, str) or not is_safe_id(raw_id):
        raise ManifestError(where, "unsafe id")
    if raw_id in seen:
        raise ManifestError(where, "duplicate id", id=raw_id)
    seen.add(raw_id)
    return raw_id


def _turns_of(obj: dict, where: str, sample_id: str) -> list[dict]:
    has_text, has_conv = "text" in obj, "conversations" in obj
    try:
        if has_text and has_conv:
            raise TurnsError("both text and conversations")
        if has_text:
            return caption_turns(obj["text"])
        if has_conv:
            return conversation_turns(obj["conversations"])
        raise TurnsError("missing field text or conversations")
    except TurnsError as err:
        raise ManifestError(where, err.reason, id=sample_id) from None


def _folder_sample(video: Path, seen: set) -> SampleSpec:
    where = str(video)
    sample_id = sanitize_stem(video.stem)
    if not is_safe_id(sample_id):
        raise ManifestError(where, "unsafe id")
    if sample_id in seen:
        raise ManifestError(where, "duplicate id", id=sample_id)
    seen.add(sample_id)
    caption, conversation = video.with_suffix(".txt"), video.with_suffix(".json")
    if caption.exists() and conversation.exists():
        raise ManifestError(where, "both .txt and .json sidecars", id=sample_id)
    sidecar = caption if caption.exists() else conversation
    if not sidecar.exists():
        raise ManifestError(where, "missing sidecar text", id=sample_id)
    text = _read_sidecar(sidecar, sample_id)
    try:
        if sidecar is caption:
            turns = caption_turns(text.strip())
        else:
            turns = conversation_turns(_sidecar_conversation(text, sidecar, sample_id))
    except TurnsError as err:
        raise ManifestError(str(sidecar), err.reason, id=sample_id) from None
    return SampleSpec(sample_id, os.path.abspath(video), turns, str(sidecar))


def _read_sidecar(sidecar: Path, sample_id: str) -> str:
    try:
        return sidecar.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(str(sidecar), "invalid UTF-8", id=sample_id) from None
    except PermissionError:
        raise ManifestError(str(sidecar), "permission denied", id=sample_id) from None


def _sidecar_conversation(text: str, sidecar: Path, sample_id: str):
    """A ``.json`` sidecar holds either the list of turns or an object with ``conversations``."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        raise ManifestError(str(sidecar), "malformed JSON", id=sample_id) from None
    if isinstance(obj, dict):
        if "conversations" not in obj:
            raise ManifestError(str(sidecar), "missing field conversations", id=sample_id)
        return obj["conversations"]
    return obj
