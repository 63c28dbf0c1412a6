"""Process helpers shared by tests that start Ray nodes in their own sessions."""
import os
from pathlib import Path


def session_pids(sid: int) -> list:
    """Processes whose session id is ``sid`` (the Ray head and everything it started)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        # fields: state ppid pgrp session ...; zombies are gone once reaped.
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids
