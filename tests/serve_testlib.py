"""Reading a test subprocess's output: wait for the line that says it is ready."""

from __future__ import annotations

import re
import subprocess
import threading


def wait_for_match(
    proc: subprocess.Popen[str], pattern: str, timeout: float, lines: list[str] | None = None
) -> str | None:
    """Reads ``proc``'s stdout (on a thread, to its end) until a line matches ``pattern``.

    Args:
        proc: a process started with ``stdout=PIPE`` in text mode.
        pattern: a regular expression with one group.
        timeout: seconds to wait for the match.
        lines: where every line read is appended, if given.

    Returns:
        The first match's group, or ``None`` when none came within ``timeout`` (or the output
        ended first).
    """
    found: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if lines is not None:
                lines.append(line)
            m = re.search(pattern, line)
            if m and not found:
                found.append(m.group(1))
                done.set()
        done.set()

    threading.Thread(target=read, daemon=True).start()
    done.wait(timeout)
    return found[0] if found else None
