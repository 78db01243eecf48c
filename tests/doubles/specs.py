"""Where the official specs are: `shared/specs` beside the repository (the main checkout is
/work/main next to /work/shared; a worktree sits one level deeper), or $BOID_SPECS."""

from __future__ import annotations

import os
from pathlib import Path


def specs_dir() -> Path:
    env = os.environ.get("BOID_SPECS")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "shared" / "specs"
        if cand.is_dir():
            return cand
    raise FileNotFoundError("shared/specs not found above " + str(here) + " (set BOID_SPECS)")
