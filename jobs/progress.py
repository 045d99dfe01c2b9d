"""A progress bar for long jobs: units done of total, rate and ETA (tqdm, on stderr)."""
from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, initial: int = 0, desc: str = "", enabled: bool = True,
                 unit: str = "unit"):
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                         disable=not enabled, dynamic_ncols=True, mininterval=0.5, smoothing=0.1)

    def update(self, n: int = 1, **postfix) -> None:
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()
