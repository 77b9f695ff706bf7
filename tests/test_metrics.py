"""The training logs: metrics.jsonl survives a kill mid-write; logs off a terminal stay plain."""

import json
import signal
import subprocess
import sys
from pathlib import Path

from jbert.training.logger import MetricsLogger

ROOT = Path(__file__).resolve().parent.parent


_KILLED_MID_WRITE = """
import os, signal, sys
from jbert.training.logger import MetricsLogger
logger = MetricsLogger(sys.argv[1], total_steps=10, start_step=0, progress=False)
for step in (1, 2, 3):
    logger.write(step, {"loss": 1.0 / step})
write = logger._file.write
def half_then_killed(text):  # the kill lands inside this write: half the record is on disk
    write(text[: len(text) // 2])
    logger._file.flush()
    os.kill(os.getpid(), signal.SIGKILL)
logger._file.write = half_then_killed
logger.write(4, {"loss": 0.25, "note": "ü" * 40})
"""


def test_a_metrics_line_torn_by_a_kill_is_dropped_on_reopen(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    lines = (tmp_path / "metrics.jsonl").read_bytes().split(b"\n")
    assert len(lines) == 4 and lines[3].startswith(b'{"step": 4')  # torn: no newline, no end
    logger = MetricsLogger(tmp_path, total_steps=10, start_step=3, progress=False)
    logger.write(4, {"loss": 0.25})
    logger.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    # A last record complete but for its newline is kept.
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}')
    MetricsLogger(tmp_path, total_steps=10, start_step=2, progress=False).close()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


def test_logs_that_are_not_a_terminal_get_one_plain_line_per_record(tmp_path, capsys):
    logger = MetricsLogger(tmp_path, total_steps=100, start_step=0, prefix="masked_lm")
    for step in range(1, 101):
        if step % 10 == 0:
            logger.write(step, {"loss": 2.0, "tokens_per_s": 1234.5})
        logger.advance(step)
    logger.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 10 and lines[0] == "[masked_lm] step 10/100 loss=2 tokens_per_s=1234"
