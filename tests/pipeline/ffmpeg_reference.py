"""FFmpeg's own decode, the reference every stored frame is compared with.

One ``ffmpeg`` command line (the imageio-ffmpeg binary) per check: the input's default video
stream, autorotated as the command line does by default, every decoded frame passed through
(``-fps_mode passthrough``: no frame dropped or duplicated), the frames with the wanted numbers
picked by the ``select`` filter (``n`` counts decoded frames in display order; for many picks,
every frame is output and the picks taken here), scaled by swscale with the flags the pipeline
uses to the planned size, as RGB. ``showinfo`` gives each picked frame's presentation
time; frame 0 is always picked so times are measured from it. With ``-v verbose`` FFmpeg also
reports how many frames it decoded, the true frame count.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

import numpy as np

from pipeline.av_decode import SCALE_FLAGS  # the resize is part of the plan: the same one here
from pipeline.sample_videos import ffmpeg_exe


@dataclass
class Reference:
    frames: np.ndarray  # (n, height, width, 3) uint8, the requested indices in order
    times: np.ndarray  # seconds from frame 0, per requested index
    n_frames: int  # frames FFmpeg decoded and showed in all


_MAX_SELECT = 40  # longer select expressions exceed FFmpeg's expression parser: take every frame
_PTS_TIME = re.compile(r"\] n: *(\d+) pts: *(-?\d+) pts_time:(-?[\d.e+-]+)")
_DECODED = re.compile(r"(\d+) frames decoded")


def ffmpeg_decode(path, indices, height: int, width: int) -> Reference:
    picked = sorted({0, *map(int, indices)})
    graph = f"scale={width}:{height}:flags={SCALE_FLAGS},format=rgb24,showinfo"
    if len(picked) <= _MAX_SELECT:
        graph = "select='" + "+".join(f"eq(n\\,{i})" for i in picked) + "'," + graph
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "verbose", "-threads", "1", "-i", str(path),
           "-an", "-sn", "-dn", "-fps_mode", "passthrough", "-vf", graph, "-f", "rawvideo", "pipe:1"]
    done = subprocess.run(cmd, capture_output=True, check=False)
    log = done.stderr.decode(errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg failed on {path}:\n{log[-2000:]}")
    frames = np.frombuffer(done.stdout, np.uint8).reshape(-1, height, width, 3)
    times = [float(t) for _, _, t in _PTS_TIME.findall(log)]
    decoded = [int(n) for n in _DECODED.findall(log)]
    if len(picked) > _MAX_SELECT:  # every frame came out: keep the picked ones
        frames, times = frames[picked], [times[i] for i in picked]
    if len(frames) != len(picked) or len(times) != len(picked):
        raise RuntimeError(f"ffmpeg showed {len(frames)} of the {len(picked)} frames picked from {path}"
                           f" (it decoded {decoded})")
    at = {i: k for k, i in enumerate(picked)}
    rows = [at[int(i)] for i in indices]
    return Reference(frames[rows], (np.asarray(times) - times[0])[rows], decoded[0])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
