"""Work a call must finish even when its caller goes away, with nothing of it lost.

``asyncio.shield`` lets the shielded work run on when the awaiting task is cancelled,
but if that work then fails, nobody retrieves its exception: asyncio logs "Task
exception was never retrieved" with a traceback, once per such call (a storm of
cancelled generations whose cleanup save met ABORTED in Redis left about a hundred per
replica), and an error raised while a cut-off call is being closed becomes the
unretrieved error of the task that closes it. ``shielded`` logs such an outcome as what
it is instead.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from rnnserve_server.errors import ServiceError

log = logging.getLogger(__name__)
T = TypeVar("T")


async def shielded(work: Awaitable[T], what: str, caller_gone: bool = False) -> T | None:
    """Await ``work`` to its end even if the caller is cancelled meanwhile; an error it
    ends with after that is logged (``what`` names the work), not left unretrieved. With
    ``caller_gone`` (the call is being cut off already) an error is logged, not raised:
    there is nobody left to tell, and raising it would make it the unretrieved error of
    the task that closes the call."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(functools.partial(_outcome, what))
        raise
    except Exception:
        if not caller_gone:
            raise
        _outcome(what, task)
        return None


def _outcome(what: str, task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if isinstance(error, ServiceError):
        log.info("%s, after its caller went away: %s", what, error.message)
    elif error is not None:
        log.error("%s failed after its caller went away", what, exc_info=error)
