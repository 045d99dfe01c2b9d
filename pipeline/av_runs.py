"""Decoding runs of packets: from an entry keyframe to the last packet a wanted frame needs.

A run starts with the decoder flushed at a keyframe, sends the packets in decode order and drains
the decoder at the end, so no state leaks between runs that skip the packets in between. Packets
whose frame is not wanted go in with ``skip_frame = NONREF``: the decoder drops them if nothing
references them (most B-frames), which is exact by definition of a non-reference picture and is
where most of the speed over decoding everything comes from. A codec that ignores the setting
(dav1d reads it only when it opens) is never asked to.

:class:`PacketCursor` hands out packets by their number in decode order (the numbering of
:mod:`pipeline.av_index`), reading forward or seeking. A seek lands "roughly" (MPEG-TS/PS seek by
bisecting the file on timestamps), so the cursor only trusts it once it reads the packet with the
entry keyframe's presentation time; every later packet must carry the time the index has for its
number. Anything else (a seek past the target, a packet out of step) makes it read the file from
the start instead, which is always exact.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from pipeline.av_stream import open_video

SEEK_MIN_PACKETS = 250  # read forward over shorter gaps: cheaper than a seek, and always exact
_SEEK_SEARCH_PACKETS = 4000  # packets read after a seek to find the entry keyframe
NO_PTS = np.iinfo(np.int64).min
# Decoders that read ``skip_frame`` for each picture. Others read it once when they open (dav1d:
# set before the first packet, it would drop non-reference frames for good), so they get none.
SKIPPING_DECODERS = frozenset({"h264", "hevc", "mpeg1video", "mpeg2video", "mpeg4", "vp8", "vp9"})


class Desync(Exception):
    """The demuxer's packets no longer match the index: read from the start instead."""


class PacketCursor:
    """Packets of one video stream by decode-order number; reopens the file to go back."""

    def __init__(self, path: str, packet_pts: np.ndarray, packet_dts: np.ndarray, seekable: bool):
        self.path = path
        self.packet_pts, self.packet_dts = packet_pts, packet_dts
        self.seekable = seekable
        self.container = self.stream = self._packets = None
        self.next_no = 0
        self._reopen()

    def _reopen(self) -> None:
        self.close()
        self.container, self.stream = open_video(self.path)
        self._packets = self._demux()
        self.next_no = 0

    def _demux(self) -> Iterator:
        for packet in self.container.demux(self.stream):
            if packet.size:
                yield packet

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None

    def move_to(self, number: int) -> None:
        """Make ``number`` the next packet ``next_packet`` returns."""
        if number < self.next_no:
            if not (self.seekable and self._seek(number)):
                self._reopen()
        elif number - self.next_no >= SEEK_MIN_PACKETS and self.seekable and self._seek(number):
            return
        while self.next_no < number:
            self.next_packet()

    def next_packet(self):
        packet = next(self._packets, None)
        if packet is None:
            raise Desync(f"the stream ends at packet {self.next_no}, the index has {len(self.packet_pts)}")
        expected = self.packet_pts[self.next_no]
        if expected != NO_PTS and packet.pts != expected:
            raise Desync(f"packet {self.next_no} has pts {packet.pts}, the index says {expected}")
        self.next_no += 1
        return packet

    def _seek(self, number: int) -> bool:
        """Seek to keyframe packet ``number``; False (and the cursor at the file start) if that fails.

        A seek that lands after the keyframe (MPEG-PS/TS bisect on timestamps, which overlap at
        joins) is retried from further back: 5, 20 and 80 seconds before it."""
        target = int(self.packet_pts[number])
        follow = [int(p) for p in self.packet_pts[number + 1 : number + 4]]
        for back_s in (0, 5, 20, 80):
            back = int(back_s / float(self.stream.time_base)) if self.stream.time_base else 0
            self.container.seek(target - back, stream=self.stream, backward=True)
            self._packets = self._demux()
            for _ in range(_SEEK_SEARCH_PACKETS):
                packet = next(self._packets, None)
                if packet is None:
                    break
                if packet.pts == target and packet.is_keyframe:
                    ahead = [next(self._packets, None) for _ in follow]
                    if [a.pts if a is not None else None for a in ahead] == follow:
                        self._packets = itertools.chain([packet, *ahead], self._packets)
                        self.next_no = number
                        return True
        self._reopen()
        return False


def decode_run(cursor: PacketCursor, start: int, stop: int, skip: np.ndarray | None) -> Iterator:
    """Frames decoded from packets ``start..stop`` (decode order, inclusive), then the drained
    decoder's. ``skip[i]`` (packet ``start + i``) lets the decoder drop that picture if unreferenced."""
    cursor.move_to(start)
    context = cursor.stream.codec_context
    context.flush_buffers()
    if context.name not in SKIPPING_DECODERS:
        skip = None
    skipping = False
    context.skip_frame = "DEFAULT"  # a run abandoned half-way may have left it set
    for i in range(stop - start + 1):
        packet = cursor.next_packet()
        want_skip = bool(skip is not None and skip[i])
        if want_skip != skipping:
            context.skip_frame = "NONREF" if want_skip else "DEFAULT"
            skipping = want_skip
        yield from context.decode(packet)
    if skipping:
        context.skip_frame = "DEFAULT"
    yield from context.decode(None)
    context.flush_buffers()
