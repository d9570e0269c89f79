"""A hook call made in this process the way hookclient.main makes it where no agent
listens: triage, then the engine through dispatch.run, then the answer written out."""

from __future__ import annotations

import io
import sys

from kvmhooks import dispatch
from kvmhooks.hookclient import Work, triage, write_answer


def hook_call(trigger: str, argv: list[str], stdin=None, stdout=None, stderr=None) -> int:
    answer = triage(trigger, argv, stdin or io.BytesIO())
    if isinstance(answer, Work):
        answer = dispatch.run(trigger, argv, answer.data)
    return write_answer(answer, stdout or io.BytesIO(), stderr or sys.stderr)
