"""Logging to syslog / the journal (and stderr for the command line)."""

from __future__ import annotations

import logging
import logging.handlers

SYSLOG_SOCKET = "/dev/log"


def setup(to_stderr: bool) -> logging.Logger:
    logger = logging.getLogger("kvmhooks")
    if logger.handlers:  # the agent runs many calls in one process
        return logger
    logger.setLevel(logging.INFO)
    logger.propagate = False
    # A log that cannot be written must never fail a hook: no tracebacks on stderr,
    # which a hook keeps for its one error line.
    logging.raiseExceptions = False
    try:
        # Connects lazily and again after errors: syslog may start after the agent.
        handler = logging.handlers.SysLogHandler(
            address=SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("kvmhooks[%(process)d]: %(message)s"))
    logger.addHandler(handler)
    if to_stderr:
        stream = logging.StreamHandler()
        stream.setFormatter(logging.Formatter("kvmhooks: %(message)s"))
        stream.setLevel(logging.WARNING)
        logger.addHandler(stream)
    return logger
