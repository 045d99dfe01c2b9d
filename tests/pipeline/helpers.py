"""Helpers shared by the pipeline tests."""

from __future__ import annotations

import json
import os

from pipeline.errors import InputError
from pipeline.probe import probe_video


def probe_as_worker(path, id=None) -> dict | None:
    """Probe like an unprivileged encode worker would: the error row, or None if the probe passed.

    Root bypasses permission bits (CAP_DAC_OVERRIDE), so when the tests run as root the probe runs
    in a forked child that has dropped to ``nobody`` first.
    """
    if os.geteuid() != 0:
        return _probe_row(path, id)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop privileges, probe, report, exit without running pytest's cleanup
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, json.dumps(_probe_row(path, id)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(payload)


def _probe_row(path, id):
    try:
        probe_video(path, id=id)
    except InputError as err:
        return err.as_row()
    return None
