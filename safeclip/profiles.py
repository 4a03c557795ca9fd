"""Write params.yaml from conf/ (the same Hydra composition `dvc exp run` does), for a profile and overrides.

    python -m safeclip.profiles                 # the committed world default
    python -m safeclip.profiles profile=paper   # make the paper profile the workspace default for `dvc repro`
    python -m safeclip.profiles profile=paper @examples/paper-1gpu.overrides   # + the overrides in a file
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def compose(output: str | Path, overrides: list[str], root: str | Path = ".") -> None:
    from dvc.utils.hydra import compose_and_dump

    from safeclip.inputs import register_resolver

    register_resolver()
    root = Path(root).resolve()
    # plugins from conf/hydra_plugins/, as `dvc exp run` loads them (hydra.plugins_path in .dvc/config)
    compose_and_dump(str(output), str(root / "conf"), None, "config", str(root / "conf"), overrides)


def expand(args: list[str]) -> list[str]:
    """`@FILE` stands for the overrides in FILE, one per line (blank lines and `#` comment lines skipped), e.g.
    `profile=paper @examples/paper-1gpu.overrides base.scale=0.1`: later overrides win."""
    out: list[str] = []
    for a in args:
        if a.startswith("@"):
            lines = Path(a[1:]).read_text(encoding="utf-8").splitlines()
            out += [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
        else:
            out.append(a)
    return out


def main() -> None:
    compose(Path(os.getcwd()) / "params.yaml", expand(sys.argv[1:]))


if __name__ == "__main__":
    main()
