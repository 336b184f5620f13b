"""Worker processes for decompose units, with each worker's death noticed (``Pool.imap`` waits forever on a lost task).

The parent hands one unit at a time to each worker over its own pipe and waits on the pipes and the process
sentinels together. A worker that exits without answering (SIGKILL, the out-of-memory killer, a crash in a codec)
is replaced; the video it had begun becomes a ``WorkerDiedError`` reject in the unit's journal, and the unit goes
back to the queue to resume after that video. A fault a worker reports (out of memory caught in Python, a failing
re-encode, a full disk) stops the stage: it is the machine's, not a video's. Workers die with the parent (Linux
``PR_SET_PDEATHSIG``; elsewhere they notice between clips), so a killed stage leaves no writer behind.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable, Iterable, Optional

from videolavit.data.clip_units import Unit, note_dead_worker, process_unit
from videolavit.errors import VideolavitError


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _die_with_parent(parent_pid: int) -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _worker_main(conn, cfg_yaml: str, out: str, parent_pid: int) -> None:
    import warnings

    from omegaconf import OmegaConf

    _die_with_parent(parent_pid)
    warnings.filterwarnings("ignore")
    cfg = OmegaConf.create(cfg_yaml)
    while True:
        unit = conn.recv()
        if unit is None:
            return
        try:
            process_unit(unit, Path(out), cfg, parent_pid)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops the stage
            message = str(exc) if isinstance(exc, VideolavitError) else f"{type(exc).__name__}: {exc}"
            conn.send(("error", f"decompose unit {unit.name}: {message}"))
            return
        conn.send(("done", {"unit": unit.name, "peak_rss_mb": peak_rss_mb()}))


def describe_exit(code: Optional[int]) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = ": the out-of-memory killer sends this" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


class _Slot:
    def __init__(self, ctx, cfg_yaml: str, out: Path):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, cfg_yaml, str(out), os.getpid()), daemon=True)
        self.proc.start()
        child.close()
        self.unit: Optional[Unit] = None


def run_units(
    units: Iterable[Unit], out: Path, cfg_yaml: str, workers: int, on_done: Callable[[dict], None] = lambda r: None
) -> None:
    """Process every unit in ``workers`` processes; ``on_done`` gets each finished unit's report."""
    ctx = mp.get_context("spawn")
    source, retry = iter(units), deque()
    blameless: dict[str, int] = {}  # unit → deaths outside any video
    slots = [_Slot(ctx, cfg_yaml, out) for _ in range(max(1, workers))]
    try:
        while True:
            for slot in slots:
                if slot.unit is None:
                    slot.unit = retry.popleft() if retry else next(source, None)
                    if slot.unit is not None:
                        slot.conn.send(slot.unit)
            active = [s for s in slots if s.unit is not None]
            if not active:
                break
            ready = set(wait([s.conn for s in active] + [s.proc.sentinel for s in active]))
            for k, slot in enumerate(slots):
                if slot.unit is None or not ({slot.conn, slot.proc.sentinel} & ready):
                    continue
                message = None
                if slot.conn.poll():
                    try:
                        message = slot.conn.recv()
                    except (EOFError, OSError):
                        message = None
                if message is not None and message[0] == "done":
                    on_done(message[1])
                    slot.unit = None
                    continue
                if message is not None:  # ("error", text)
                    raise VideolavitError(message[1])
                slot.proc.join(timeout=5)
                if slot.proc.is_alive():
                    continue  # the pipe closed first; the sentinel follows
                unit, how = slot.unit, describe_exit(slot.proc.exitcode)
                if note_dead_worker(out, unit, how) is None:
                    blameless[unit.name] = blameless.get(unit.name, 0) + 1
                    if blameless[unit.name] > 1:
                        raise VideolavitError(
                            f"decompose workers died twice on {unit.name} outside any video ({how}); see their "
                            "stderr above"
                        )
                retry.appendleft(unit)
                slots[k] = _Slot(ctx, cfg_yaml, out)
    finally:
        for slot in slots:
            if slot.unit is not None:  # stopping on an error: its unit stays partial, for a re-run to resume
                slot.proc.kill()
                continue
            try:
                slot.conn.send(None)
            except OSError:
                pass
        for slot in slots:
            slot.proc.join(timeout=10)
            if slot.proc.is_alive():
                slot.proc.kill()
                slot.proc.join()
