"""The whole bad-input corpus through manifest reading and probing, as the probe job runs it:
every bad case gives exactly one error row naming the input and the reason; good lines pass."""

import json

from pipeline.manifest import read_manifest
from pipeline.sample_videos import sample_clip

from .helpers import probe_as_worker
from .test_probe import EXPECTED_REASONS


def test_corpus(shared_dir, bad_inputs):
    folder = shared_dir / "corpus"
    folder.mkdir(exist_ok=True)
    manifest = folder / "manifest.jsonl"
    good = {"good_caption": sample_clip("bikes.mp4"), "good_conversation": sample_clip("bigbuckbunny.mp4")}
    lines = [json.dumps({"id": "good_caption", "video": str(good["good_caption"]), "text": "Bikes."}).encode(),
             json.dumps({"id": "good_conversation", "video": str(good["good_conversation"]), "conversations": [
                 {"from": "human", "value": "<video> What is this?"}, {"from": "gpt", "value": "A rabbit."}]}).encode()]
    # bad videos, referenced relative to the manifest's folder
    lines += [json.dumps({"id": name, "video": f"../bad/{path.name}", "text": "t"}).encode()
              for name, path in bad_inputs.items()]
    bad_lines = {
        "malformed JSON": b'{"id": "j", "video": "x.mp4", "text": "t"',
        "invalid UTF-8": b'{"id": "u", "video": "x.mp4", "text": "\xc3\x28"}',
        "duplicate id": json.dumps({"id": "good_caption", "video": "x.mp4", "text": "again"}).encode(),
        "unsafe id": json.dumps({"id": "../../etc/passwd", "video": "x.mp4", "text": "t"}).encode(),
        "unsafe id ": json.dumps({"id": "a/b", "video": "x.mp4", "text": "t"}).encode(),
        "missing field video": json.dumps({"id": "nv", "text": "t"}).encode(),
    }
    first_bad_line = len(lines) + 1
    lines += list(bad_lines.values())
    manifest.write_bytes(b"\n".join(lines) + b"\n")

    samples, errors = read_manifest(manifest)
    rows = [e.as_row() for e in errors]
    accepted = []
    for spec in samples:
        row = probe_as_worker(spec.video, id=spec.id)
        if row is None:
            accepted.append(spec.id)
        else:
            rows.append(row)

    assert accepted == ["good_caption", "good_conversation"]
    expected = [{"id": {"duplicate id": "good_caption", "missing field video": "nv"}.get(reason.strip()),
                 "input": f"{manifest}:{first_bad_line + k}", "stage": "manifest", "reason": reason.strip()}
                for k, reason in enumerate(bad_lines)]
    expected += [{"id": name, "input": str(bad_inputs[name]), "stage": "probe", "reason": EXPECTED_REASONS[name]}
                 for name in bad_inputs]
    assert rows == expected
