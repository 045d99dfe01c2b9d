import json

import pytest

from pipeline.errors import ManifestError
from pipeline.ids import is_safe_id, sanitize_stem
from pipeline.manifest import read_manifest, read_video_folder


def write_lines(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def line(**obj) -> bytes:
    return json.dumps(obj).encode()


def test_caption_and_conversation_forms(tmp_path):
    manifest = write_lines(tmp_path / "m.jsonl", [
        line(id="cap", video="v/a.mp4", text="A dog runs."),
        line(id="conv", video="/abs/b.mp4", conversations=[
            {"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "A dog runs."}]),
        line(id="roles", video="c.mp4", conversations=[
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Describe."},
            {"role": "assistant", "content": "A cat."}]),
        b"",
        b"   ",
    ])
    samples, errors = read_manifest(manifest)
    assert errors == []
    cap, conv, roles = samples
    assert cap.video == str(tmp_path / "v" / "a.mp4")  # relative to the manifest's folder
    assert cap.turns == [{"role": "user", "content": "<video>"}, {"role": "assistant", "content": "A dog runs."}]
    assert conv.video == "/abs/b.mp4"
    assert [t["role"] for t in conv.turns] == ["user", "assistant"]
    assert [t["role"] for t in roles.turns] == ["system", "user", "assistant"]
    assert cap.source == f"{manifest}:1"


def test_empty_manifest_is_zero_samples(tmp_path):
    (tmp_path / "m.jsonl").write_bytes(b"")
    assert read_manifest(tmp_path / "m.jsonl") == ([], [])


def test_missing_manifest_raises(tmp_path):
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path / "nope.jsonl")
    assert info.value.reason == "file not found"


BAD_LINES = [  # (reason, line)
    ("malformed JSON", b'{"id": "x1", "video": "a.mp4", "text": "unterminated'),
    ("invalid UTF-8", b'{"id": "x2", "video": "a.mp4", "text": "caf\xe9"}'),
    ("not a JSON object", b'["x3", "a.mp4"]'),
    ("missing field id", line(video="a.mp4", text="t")),
    ("missing field video", line(id="x5", text="t")),
    ("invalid field video", line(id="x6", video=7, text="t")),
    ("missing field text or conversations", line(id="x7", video="a.mp4")),
    ("both text and conversations", line(id="x8", video="a.mp4", text="t",
                                         conversations=[{"role": "user", "content": "q"}])),
    ("empty text", line(id="x9", video="a.mp4", text="  ")),
    ("no assistant turn", line(id="x10", video="a.mp4", conversations=[{"role": "user", "content": "q"}])),
    ("unknown role", line(id="x11", video="a.mp4", conversations=[{"role": "narrator", "content": "q"}])),
    ("multiple <video> markers", line(id="x12", video="a.mp4", conversations=[
        {"role": "user", "content": "<video><video>"}, {"role": "assistant", "content": "a"}])),
    ("<video> marker outside the first user turn", line(id="x13", video="a.mp4", conversations=[
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a <video>"}])),
    ("unsafe id", line(id="a/b", video="a.mp4", text="t")),
    ("unsafe id", line(id="..", video="a.mp4", text="t")),
    ("unsafe id", line(id="../etc", video="a.mp4", text="t")),
    ("unsafe id", line(id="a__b", video="a.mp4", text="t")),
    ("unsafe id", line(id="a" * 121, video="a.mp4", text="t")),
    ("unsafe id", line(id="", video="a.mp4", text="t")),
]


def test_each_bad_line_is_one_error_row_and_good_lines_pass(tmp_path):
    good = [line(id="g1", video="a.mp4", text="fine"), line(id=42, video="b.mp4", text="numeric id")]
    dup_first, dup_again = line(id="dup", video="c.mp4", text="first"), line(id="dup", video="d.mp4", text="x")
    lines = [good[0], *(raw for _, raw in BAD_LINES), dup_first, good[1], dup_again, dup_again]
    samples, errors = read_manifest(write_lines(tmp_path / "m.jsonl", lines))
    assert [s.id for s in samples] == ["g1", "dup", "42"]
    expected = [reason for reason, _ in BAD_LINES] + ["duplicate id", "duplicate id"]
    assert [e.reason for e in errors] == expected
    # each row names the manifest line it came from
    bad_line_numbers = [*range(2, 2 + len(BAD_LINES)), len(lines) - 1, len(lines)]
    assert [e.input for e in errors] == [f"{tmp_path / 'm.jsonl'}:{n}" for n in bad_line_numbers]
    assert errors[-1].id == "dup" and all(e.stage == "manifest" for e in errors)


def test_crlf_and_bom_are_tolerated(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + line(id="a", video="a.mp4", text="t") + b"\r\n"
                     + line(id="b", video="b.mp4", text="u") + b"\r\n")
    samples, errors = read_manifest(path)
    assert errors == [] and [s.id for s in samples] == ["a", "b"]


def test_ids():
    assert is_safe_id("clip_01-A") and not is_safe_id("a.b") and not is_safe_id("x__1")
    assert sanitize_stem("My clip (2).v2") == "My-clip-2-v2"
    assert sanitize_stem("...") == ""


def test_video_folder_with_sidecars(tmp_path):
    (tmp_path / "b clip.mp4").write_bytes(b"x")
    (tmp_path / "b clip.txt").write_text("A caption.\n")
    (tmp_path / "a.mkv").write_bytes(b"x")
    (tmp_path / "a.json").write_text(json.dumps(
        {"conversations": [{"role": "user", "content": "Q <video>"}, {"role": "assistant", "content": "A"}]}))
    (tmp_path / "c__d.mp4").write_bytes(b"x")
    (tmp_path / "c__d.txt").write_text("t")
    (tmp_path / "nosidecar.mp4").write_bytes(b"x")
    (tmp_path / "bad.mp4").write_bytes(b"x")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
    (tmp_path / "b-clip.webm").write_bytes(b"x")  # sanitizes to the same id as "b clip"
    (tmp_path / "b-clip.txt").write_text("t")
    (tmp_path / "notes.txt").write_text("not a video's sidecar")
    samples, errors = read_video_folder(tmp_path)
    assert [(s.id, s.turns[-1]["content"]) for s in samples] == [("a", "A"), ("b-clip", "A caption.")]
    assert samples[1].video == str(tmp_path / "b clip.mp4")
    rows = sorted((e.input.rsplit("/", 1)[1], e.reason) for e in errors)
    assert rows == [("b-clip.webm", "duplicate id"), ("bad.txt", "invalid UTF-8"),
                    ("c__d.mp4", "unsafe id"), ("nosidecar.mp4", "missing sidecar text")]
