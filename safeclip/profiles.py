"""Write params.yaml from conf/ (the same Hydra composition `dvc exp run` does), for a profile and overrides.

    python -m safeclip.profiles                 # the committed world default
    python -m safeclip.profiles profile=paper   # make the paper profile the workspace default for `dvc repro`
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def compose(output: str | Path, overrides: list[str], root: str | Path = ".") -> None:
    from dvc.utils.hydra import compose_and_dump

    root = Path(root).resolve()
    compose_and_dump(str(output), str(root / "conf"), None, "config", str(root / ".dvc"), overrides)


def main() -> None:
    compose(Path(os.getcwd()) / "params.yaml", sys.argv[1:])


if __name__ == "__main__":
    main()
