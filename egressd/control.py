"""``egressd reload``: the units' ExecReload. Checks the configuration a running daemon would
load, then sends it SIGHUP, so a reload needs no ``/bin/kill`` (absent from minimal systems)
and a broken file fails ``systemctl reload`` instead of only being refused in the log.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TextIO

from egressd.config import load_config
from egressd.enrich.labeler import CompositeLabeler
from egressd.errors import ConfigError, EgressdError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INVALID = 2


def reload_main(config_path: Path | None, pid: int, err: TextIO = sys.stderr) -> int:
    """Validate ``config_path`` (settings and geo files), then SIGHUP ``pid``.

    Exit 2 without signalling when the configuration is invalid (the daemon keeps the one it
    runs), 1 when the process cannot be signalled, 0 when the daemon was asked to reload.
    The daemon checks again itself (and rejects a changed ``detection.interval``).
    """
    if pid <= 1:
        print(f"egressd reload: no process to signal (pid {pid})", file=err)
        return EXIT_ERROR
    if config_path is not None:
        from egressd.replay import build_labeler

        try:
            config = load_config(config_path)
            labeler = build_labeler(config)
        except ConfigError as exc:
            print(f"egressd reload: {config_path} is invalid, nothing reloaded:", file=err)
            for problem in exc.problems:
                print(f"  {problem}", file=err)
            return EXIT_INVALID
        except (EgressdError, OSError, ValueError) as exc:
            print(f"egressd reload: {config_path}: {exc}; nothing reloaded", file=err)
            return EXIT_INVALID
        if isinstance(labeler, CompositeLabeler):
            labeler.close()
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(f"egressd reload: cannot signal process {pid}: {exc}", file=err)
        return EXIT_ERROR
    return EXIT_OK
