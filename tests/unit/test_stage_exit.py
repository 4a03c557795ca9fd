"""safeclip.stage.run_stage: a stage run as a program ends without the interpreter's teardown, yet keeps what
an ordinary exit gives DVC and the user: the exit code, every line written to stdout/stderr and the log."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = textwrap.dedent("""
    import atexit, logging, sys
    from safeclip.io import InputError
    from safeclip.stage import entry_point, run_stage

    atexit.register(lambda: print("teardown ran", file=sys.stderr))  # skipped: no interpreter teardown
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

    @entry_point
    def main():
        print("an unterminated line on stdout", end="")  # a pipe is block-buffered: lost unless flushed
        logging.getLogger("stage").info("a log line")
        {body}

    if __name__ == "__main__":
        run_stage(main)
""")


@pytest.mark.parametrize(("body", "code", "needle"), [
    ("pass", 0, None),
    ("raise InputError('data/x.csv: line 3: prompt: empty')", 2, "error: data/x.csv: line 3: prompt: empty"),
    ("raise ValueError('a bug')", 1, "ValueError: a bug"),
    ("sys.exit('stopped: a reason')", 1, "stopped: a reason"),
    ("raise KeyboardInterrupt", 130, "KeyboardInterrupt"),
])
def test_run_stage_keeps_the_exit_code_and_every_line_but_skips_the_teardown(tmp_path, body, code, needle):
    script = tmp_path / "stage.py"
    script.write_text(PROGRAM.format(body=body))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == "an unterminated line on stdout"
    assert "a log line" in proc.stderr and "teardown ran" not in proc.stderr
    if needle is not None:
        assert needle in proc.stderr
