"""JPEG frames in real shards, checked against FFmpeg's own JPEG decoder and the source frames.

The source frames are real video decoded by the pipeline; the reference decode of a stored
member is FFmpeg's MJPEG decoder (PyAV), not libjpeg-turbo that the reader uses, so a wrong
frame order, a frame sliced at the wrong byte or a wrong PSNR figure cannot agree by accident.
"""

import dataclasses
import io
import json
import tarfile

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset
from shard_samples import SampleSpec, write_dataset, write_shard

from pipeline.decode import iter_frame_windows
from pipeline.sample_videos import sample_clip
from shards.errors import ChecksumError, CorruptShard
from shards.format import FRAMES, JSON, member_name, shard_tar_path
from shards.frame_codecs import decode_any, frames_info_from_json
from shards.index import INDEX_SCHEMA
from shards.jpeg_frames import PSNR_EVERY, decode_jpeg_frames
from shards.load_patches import write_patches
from shards.loader import PackDataset
from shards.manifest import summarize_shard, write_manifest
from shards.packing import pack_samples
from shards.reader import DatasetReader, ShardReader
from shards.stats import compute_stats
from shards.verify import verify_dataset

VISION_ID = 151_655


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ffmpeg_decode(member: bytes) -> np.ndarray:
    """FFmpeg's own decode of a frames member read as an MJPEG stream."""
    with av.open(io.BytesIO(member), format="mjpeg") as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.fixture(scope="module")
def real_frames() -> dict[str, np.ndarray]:
    """Real decoded frames of two clips at loader-tileable sizes (multiples of 28 px)."""
    return {
        "bikes": np.concatenate(
            list(iter_frame_windows(sample_clip("bikes.mp4"), range(0, 198, 11), 112, 196))
        ),
        "bunny": np.concatenate(
            list(iter_frame_windows(sample_clip("bigbuckbunny.mp4"), range(0, 90, 9), 84, 140))
        ),
    }


def video_sample(key: str, frames: np.ndarray, rng: np.random.Generator) -> SampleSpec:
    t, h, w, _ = frames.shape
    n_text = int(rng.integers(1, 30))
    meta = {
        "vision_tokens": t // 2 * (h // 28) * (w // 28),
        "vision_at": 0,
        "loss_spans": [[0, n_text]],
        "timestamps": [i * 0.5 for i in range(t)],
        "duration_s": t * 0.5,
    }
    sizes = [3, 0, 2, t - 5]  # windows as the pipeline hands them, one of them empty
    return SampleSpec(key, meta, frames, rng.integers(0, 50_000, n_text).astype(np.int32), sizes)


@pytest.fixture
def jpeg_dataset(tmp_path, rng, real_frames):
    """Shard 0 zstd, shard 1 JPEG at quality 90: a dataset may mix codecs."""
    specs = [
        [video_sample("zbikes", real_frames["bikes"][:6], rng)],
        [video_sample(k, f, rng) for k, f in real_frames.items()],
    ]
    folder = tmp_path / "ds"
    zstd_shard = write_dataset(folder, specs[:1])[0]
    jpeg_shard = write_shard(
        shard_tar_path(folder, "shard-000001"), specs[1], frame_codec="jpeg", jpeg_quality=90
    )
    write_manifest(folder, [zstd_shard, jpeg_shard])
    return folder, {s.key: s for shard in specs for s in shard}


def tar_members(tar_path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {info.name: tar.extractfile(info).read() for info in tar}


def test_jpeg_frames_match_ffmpegs_decode_and_the_recorded_psnr(jpeg_dataset):
    folder, specs = jpeg_dataset
    tar_path = shard_tar_path(folder, "shard-000001")
    members = tar_members(tar_path)
    reader = ShardReader(tar_path)
    for key in ("bikes", "bunny"):
        source = specs[key].frames
        meta = json.loads(members[member_name(key, JSON)])
        assert meta["frames"]["codec"] == "jpeg" and meta["frames"]["quality"] == 90
        assert reader.frames_codec(key) == "jpeg"
        reference = ffmpeg_decode(members[f"{key}.frames.mjpeg"])
        assert reference.shape == source.shape
        ours = reader.read_frames(key)
        # libjpeg-turbo (ours) and FFmpeg's decoder agree up to IDCT / colour rounding
        assert np.abs(ours.astype(int) - reference).max() <= 4 and psnr(ours, reference) > 50
        assert psnr(reference, source) > 34  # real footage at q90 4:4:4, shrunk to ~100 px
        sampled = np.arange(0, len(source), PSNR_EVERY)
        recorded = meta["frames"]["psnr"]
        assert recorded["frames"] == len(sampled)
        mse = np.mean((reference[sampled].astype(np.float64) - source[sampled]) ** 2)
        assert recorded["mse"] == pytest.approx(mse, rel=0.02)
        chunks = list(reader.iter_frame_chunks(key, chunk_frames=4))
        np.testing.assert_array_equal(np.concatenate(chunks), ours)


def test_mixed_codec_dataset_verifies_and_loads(jpeg_dataset):
    folder, specs = jpeg_dataset
    report = verify_dataset(folder, decode=True)
    assert report.ok, report.problems
    assert report.samples == 3
    reader = DatasetReader(folder)
    assert reader.index["frames_codec"].to_pylist() == ["zstd", "jpeg", "jpeg"]
    np.testing.assert_array_equal(reader.read_frames("zbikes"), specs["zbikes"].frames)  # lossless
    plan = pack_samples(
        {k: s.meta["vision_tokens"] + s.text.size for k, s in specs.items()}, max_tokens=10**6
    )
    batch = PackDataset(plan, reader, vision_token_id=VISION_ID)[0]
    assert batch.pixel_patches.shape[0] == 4 * sum(s.meta["vision_tokens"] for s in specs.values())
    # Each video's patches against patches of the reference frames: the source itself for zstd
    # (lossless), FFmpeg's decode of the tar member for JPEG.
    members = tar_members(shard_tar_path(folder, "shard-000001"))
    start = 0
    for key in batch.doc_keys:
        frames = specs[key].frames
        reference = frames if key == "zbikes" else ffmpeg_decode(members[f"{key}.frames.mjpeg"])
        want = np.empty((4 * specs[key].meta["vision_tokens"], 2 * 14 * 14 * 3), np.uint8)
        write_patches(reference, want)
        got = batch.pixel_patches[start : start + len(want)].numpy()
        if key == "zbikes":
            np.testing.assert_array_equal(got, want)
        else:
            assert np.abs(got.astype(int) - want).max() <= 4
        start += len(want)
    assert start == batch.pixel_patches.shape[0]


def test_webdataset_reads_jpeg_members_that_split_by_the_recorded_sizes(jpeg_dataset):
    folder, specs = jpeg_dataset
    samples = list(
        webdataset.WebDataset(
            str(shard_tar_path(folder, "shard-000001")), shardshuffle=False, empty_check=False
        )
    )
    assert [s["__key__"] for s in samples] == ["bikes", "bunny"]
    for sample in samples:
        assert {k for k in sample if not k.startswith("__")} == {"frames.mjpeg", "json", "text.npy"}
        meta = json.loads(sample["json"])
        info = frames_info_from_json(meta["frames"], what=sample["__key__"])
        frames = np.concatenate(list(decode_any(io.BytesIO(sample["frames.mjpeg"]), info, what="wds")))
        assert psnr(frames, specs[sample["__key__"]].frames) > 34


def test_a_corrupted_jpeg_member_is_caught_by_verify_and_named_by_the_loader(jpeg_dataset):
    folder, specs = jpeg_dataset
    tar_path = shard_tar_path(folder, "shard-000001")
    reader = ShardReader(tar_path)
    loc = reader.location("bunny", FRAMES)
    with open(tar_path, "r+b") as f:  # flip one byte inside the second JPEG's entropy-coded data
        first = json.loads(reader.read_member("bunny", JSON))["frames"]["frame_sizes"][0]
        f.seek(loc.offset + first + 400)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x5A]))
    problems = [str(p) for p in verify_dataset(folder).problems]
    assert any("'bunny.frames.mjpeg': crc32" in p for p in problems), problems
    reader = DatasetReader(folder)
    plan = pack_samples(
        {k: s.meta["vision_tokens"] + s.text.size for k, s in specs.items()},
        max_tokens=max(s.meta["vision_tokens"] + s.text.size for s in specs.values()),
    )
    data = PackDataset(plan, reader, vision_token_id=VISION_ID)
    failures = []
    for pack in range(len(data)):
        try:
            data[pack]
        except ChecksumError as e:
            failures.append(str(e))
    assert len(failures) == 1
    assert str(tar_path) in failures[0] and "'bunny'" in failures[0] and "bunny.frames.mjpeg" in failures[0]


@pytest.mark.parametrize("damage", ["cut", "header"])
def test_a_broken_jpeg_names_its_frame(real_frames, damage):
    """Bytes that are intact (the crc32 would match) but not a JPEG: the frame is named.

    (Damage inside the entropy-coded data can decode to wrong pixels without an error from
    libjpeg; the member's crc32, checked on every read and by verify, is what catches that.)
    """
    from shards.jpeg_frames import JpegEncoder

    pieces: list[bytes] = []
    encoder = JpegEncoder(pieces.append, quality=80, what="test")
    encoder.add(real_frames["bunny"][:3])
    info = encoder.finish()
    if damage == "cut":  # frame 1 loses its second half, the sizes say so
        pieces[1] = pieces[1][: len(pieces[1]) // 2]
        reason = "not a whole JPEG"
    else:  # frame 1's headers overwritten after its start marker
        pieces[1] = pieces[1][:2] + bytes(200) + pieces[1][202:]
        reason = "libjpeg cannot decode it"
    info = dataclasses.replace(info, frame_sizes=tuple(len(p) for p in pieces))
    with pytest.raises(CorruptShard, match=rf"sample x: JPEG frame 1 at byte {len(pieces[0])}: {reason}"):
        list(decode_jpeg_frames(io.BytesIO(b"".join(pieces)), info, what="sample x"))


def test_format_1_shards_without_the_codec_column_still_read(dataset):
    """Indexes written before frame codecs lack ``frames_codec``: they read and verify as zstd."""
    folder, specs, summaries = dataset
    for summary in summaries:
        table = pq.read_table(summary.index_path).drop_columns(["frames_codec"])
        old = table.replace_schema_metadata({b"longshot.shard_format": b"1"})
        pq.write_table(old, summary.index_path, compression="zstd")
    write_manifest(folder, [summarize_shard(s.tar_path) for s in summaries])
    assert "frames_codec" not in pq.read_schema(summaries[0].index_path).names
    reader = DatasetReader(folder)
    assert set(reader.index["frames_codec"].to_pylist()) == {"zstd"}
    assert reader.index.schema.names == [*INDEX_SCHEMA.names, "shard"]
    for shard in specs:
        for spec in shard:
            np.testing.assert_array_equal(reader.read_frames(spec.key), spec.frames)
    assert verify_dataset(folder, decode=True).ok


def test_stats_report_bytes_per_video_hour_and_psnr_per_codec(jpeg_dataset):
    folder, specs = jpeg_dataset
    stats = compute_stats(folder)
    members = {
        **tar_members(shard_tar_path(folder, "shard-000000")),
        **tar_members(shard_tar_path(folder, "shard-000001")),
    }
    assert (
        stats.value("frame codecs", "zstd samples") == 1 and stats.value("frame codecs", "jpeg samples") == 2
    )
    jpeg_bytes = len(members["bikes.frames.mjpeg"]) + len(members["bunny.frames.mjpeg"])
    jpeg_hours = (specs["bikes"].meta["duration_s"] + specs["bunny"].meta["duration_s"]) / 3600
    assert stats.value("frame codecs", "jpeg frames bytes per video hour") == pytest.approx(
        jpeg_bytes / jpeg_hours
    )
    zstd_rate = len(members["zbikes.frames.zst"]) / (specs["zbikes"].meta["duration_s"] / 3600)
    assert stats.value("frame codecs", "zstd frames bytes per video hour") == pytest.approx(zstd_rate)
    # PSNR of the sampled frames, recomputed from FFmpeg's decode of the members and the source frames
    errors, worst = [], 0.0
    for key in ("bikes", "bunny"):
        sampled = np.arange(0, len(specs[key].frames), PSNR_EVERY)
        decoded = ffmpeg_decode(members[f"{key}.frames.mjpeg"])[sampled].astype(np.float64)
        per_frame = ((decoded - specs[key].frames[sampled]) ** 2).reshape(len(sampled), -1).mean(axis=1)
        errors += per_frame.tolist()
        worst = max(worst, per_frame.mean())
    assert stats.value("frame codecs", "jpeg frames compared with the source") == len(errors)
    assert stats.value("frame codecs", "jpeg PSNR dB vs source") == pytest.approx(
        10 * np.log10(255**2 / np.mean(errors)), abs=0.1
    )
    assert stats.value("frame codecs", "jpeg PSNR dB, worst sample") == pytest.approx(
        10 * np.log10(255**2 / worst), abs=0.1
    )
    with pytest.raises(KeyError):
        stats.value("frame codecs", "zstd PSNR dB vs source")
