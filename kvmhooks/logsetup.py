"""Logging to syslog / the journal (and stderr for the command line)."""

from __future__ import annotations

import logging
import logging.handlers
import os

SYSLOG_SOCKET = "/dev/log"


def setup(to_stderr: bool) -> logging.Logger:
    logger = logging.getLogger("kvmhooks")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    # Without any handler, logging's last resort would print warnings to stderr,
    # which a hook must keep for its one error line.
    logger.addHandler(logging.NullHandler())
    if os.path.exists(SYSLOG_SOCKET):
        try:
            handler = logging.handlers.SysLogHandler(
                address=SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        except OSError:  # a socket nobody listens on: no syslog, and no reason to fail
            handler = None
        if handler is not None:
            handler.setFormatter(logging.Formatter("kvmhooks[%(process)d]: %(message)s"))
            logger.addHandler(handler)
    if to_stderr:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("kvmhooks: %(message)s"))
        handler.setLevel(logging.WARNING)
        logger.addHandler(handler)
    return logger
