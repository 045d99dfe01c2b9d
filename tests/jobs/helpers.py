"""Folder comparisons shared by the job tests."""
from __future__ import annotations

from pathlib import Path


def output_files(folder: Path) -> dict[str, bytes]:
    """Every file of a job's output folder except the runtime's own state."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".longshot" not in p.relative_to(folder).parts}
