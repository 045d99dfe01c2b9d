"""`longshot show DATA KEY`: a contact sheet of what one stored sample holds, to look at, not trust.

The PNG has every stored frame (up to ``--max-frames``, evenly spaced beyond that) labelled with
its source frame index and timestamp, as the shard records them, and below them the sample's text
with the trained spans (the loss mask's spans) marked: in the PNG in bold red between ``[[ ]]``,
on the console between ``[[ ]]``. Marking spans needs the tokenizer the shard was made with
(``--tokenizer``); without it the text is shown from the sample's turns, unmarked.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np

from shards.reader import DatasetReader


def register(sub) -> None:
    p = sub.add_parser("show", help="contact sheet PNG of one sample's stored frames and text")
    p.add_argument("dir", help="a dataset folder written by preprocess")
    p.add_argument("key", help="the sample's key (see `longshot stats` or the shard index)")
    p.add_argument("--tokenizer", help="the tokenizer.json the shard was made with (marks trained spans)")
    p.add_argument("--out", help="PNG path (default: DIR/show/KEY.png)")
    p.add_argument("--max-frames", type=int, default=64, help="frames on the sheet, evenly spaced")
    p.set_defaults(func=_show)


def _show(args) -> int:
    from jobs.cli import BadInput

    dataset = Path(args.dir)
    with DatasetReader(dataset) as reader:
        if args.key not in reader:
            raise BadInput(f"{dataset}: no sample with key {args.key!r}")
        sample = reader.read(args.key)
    text = marked_text(sample.meta, sample.text, args.tokenizer)
    out = Path(args.out) if args.out else dataset / "show" / f"{args.key}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    shown = contact_sheet(sample.frames, sample.meta, text, out, args.max_frames)
    print(f"{args.key}: {len(sample.frames)} frames {sample.frames.shape[2]}x{sample.frames.shape[1]}, "
          f"{len(sample.text)} text tokens, video {sample.meta.get('video')}")
    print(text)
    print(f"written: {out} ({shown} of {len(sample.frames)} frames)")
    return 0


def marked_text(meta: dict, token_ids: np.ndarray, tokenizer_path: str | None) -> str:
    """The sample's text with each trained span between ``[[`` and ``]]``."""
    if tokenizer_path is None:
        turns = "\n".join(f"{t.get('role', '?')}: {t.get('content', '')}" for t in meta.get("turns", []))
        return turns + "\n(trained spans not marked: pass --tokenizer)"
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))  # only decoding: any chat format will do
    ids = [int(i) for i in token_ids]
    pieces, at = [], 0
    for start, end in meta.get("loss_spans", []):
        pieces.append(tokenizer.decode(ids[at:start], skip_special_tokens=False))
        pieces.append("[[" + tokenizer.decode(ids[start:end], skip_special_tokens=False) + "]]")
        at = end
    pieces.append(tokenizer.decode(ids[at:], skip_special_tokens=False))
    return "".join(pieces)


def contact_sheet(frames: np.ndarray, meta: dict, text: str, out: Path, max_frames: int) -> int:
    """Write the PNG; returns how many frames it shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), max_frames)).round().astype(int))
    cols = min(8, len(picks))
    rows = math.ceil(len(picks) / cols)
    height, width = frames.shape[1:3]
    cell = 2.2
    lines = [line for para in text.splitlines() for line in (textwrap.wrap(para, 110) or [""])]
    text_h = 0.25 * (len(lines) + 2)
    fig = plt.figure(figsize=(cols * cell, rows * cell * height / width + 0.5 + text_h))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[cell * height / width] * rows + [text_h])
    indices, times = meta.get("frame_indices", []), meta.get("timestamps", [])
    for k, i in enumerate(picks):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        ax.imshow(frames[i])
        ax.set_axis_off()
        label = f"#{indices[i]}" if i < len(indices) else f"[{i}]"
        if i < len(times):
            label += f"  t={times[i]:.2f}s"
        ax.set_title(label, fontsize=7)
    ax = fig.add_subplot(grid[rows, :])
    ax.set_axis_off()
    _draw_marked(ax, lines)
    fig.suptitle(f"{meta.get('id', '')}  {meta.get('video', '')}", fontsize=8)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return len(picks)


def _draw_marked(ax, lines: list[str]) -> None:
    """Text lines, the parts inside [[ ]] in bold red (a span may run over several lines)."""
    inside = False
    for row, line in enumerate(lines):
        y = 1 - (row + 1) / (len(lines) + 1)
        x = 0.0
        for part in _split_marks(line):
            if part in ("[[", "]]"):
                inside = part == "[["
            ax.text(x, y, part, transform=ax.transAxes, fontsize=7, family="monospace",
                           color="red" if inside or part == "]]" else "black",
                           weight="bold" if inside or part == "]]" else "normal", va="top")
            x += len(part) / 150  # monospace: advance by characters


def _split_marks(line: str) -> list[str]:
    parts, rest = [], line
    while rest:
        cut = min((p for p in (rest.find("[["), rest.find("]]")) if p >= 0), default=-1)
        if cut < 0:
            parts.append(rest)
            break
        if cut:
            parts.append(rest[:cut])
        parts.append(rest[cut:cut + 2])
        rest = rest[cut + 2:]
    return parts
