"""The decode log of one unit: FFmpeg's lines in a file, one summary line per damaged input back.

The decode path (:mod:`pipeline.av_decode`) logs one WARNING line per input whose stored frames
were concealed after decode errors, and every FFmpeg line at DEBUG. A Ray worker's console is not
the user's (the executor keeps worker output away from the driver), so a unit captures both: the
details go to ``logs/UNIT.decode.log`` in its staging folder (committed with its shard), the
summary lines into its result, which the step prints at the end of the run.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

_LOGGER = "longshot.decode"


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.summaries: list[str] = []
        self.details: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.details.append(f"{logging.getLevelName(record.levelno)} {line}")
        if record.levelno >= logging.WARNING:
            self.summaries.append(line)


@contextlib.contextmanager
def captured_decode_log(log_path: Path):
    """Within the block, decode log lines are kept, not printed; yields the summary lines (a
    list filled as they come) and writes every line to ``log_path`` if there were any."""
    logger = logging.getLogger(_LOGGER)
    handler = _Lines()
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield handler.summaries
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        if handler.details:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text("\n".join(handler.details) + "\n")
