"""A child process that must not outlive its parent: Linux's parent-death signal.

`prctl(PR_SET_PDEATHSIG, SIGKILL)` asks the kernel to kill this process the moment the thread
that started it ends, however it ends (`kill -9` included), which no handler in the parent can
promise. Elsewhere than Linux it is not available and nothing is done.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> bool:
    """Have this process killed (SIGKILL) when its parent `parent_pid` ends; whether it could
    be arranged (Linux only). A parent already gone ends this process at once."""
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
    # The parent may have died before the signal was armed: we were then re-parented.
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)
    return True
