"""A small process supervisor: starts child processes, restarts one that
crashed (with backoff, and says so), and stops them all on SIGINT/SIGTERM.
Used by ``pacs up`` and by the gateway for its listener processes."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

LOG = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (Linux),
    so that no orphan keeps a port or a queue after ``kill -9`` of a parent."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    pass_fds: tuple[int, ...] = ()
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures: int = field(default=0)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, pass_fds=self.pass_fds,
                                     preexec_fn=die_with_parent)
        self.started_at = time.monotonic()


class Supervisor:
    def __init__(self, children: list[Child], report: Callable[[str], None] | None = None) -> None:
        self.children = children
        self.report = report or (lambda msg: LOG.warning("%s", msg))
        self._stopping = False

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def run(self) -> int:
        """Start everything and supervise until a stop signal."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for child in self.children:
            child.start()
        try:
            while not self._stopping:
                time.sleep(0.2)
                for child in self.children:
                    self._check(child)
        finally:
            self.stop()
        return 0

    def _check(self, child: Child) -> None:
        if child.proc is None or self._stopping:
            return
        code = child.proc.poll()
        if code is None:
            if time.monotonic() - child.started_at > 30:
                child.failures = 0
            return
        child.failures += 1
        delay = min(30.0, 0.5 * 2 ** (child.failures - 1))
        self.report(f"{child.name} exited with code {code}; restarting in {delay:.1f}s")
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self._stopping:
            time.sleep(0.1)
        if not self._stopping:
            child.restarts += 1
            child.start()

    def stop(self, timeout: float = 15.0) -> None:
        for child in self.children:
            if child.proc and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.report(f"{child.name} did not stop in time; killing it")
                child.proc.kill()
                child.proc.wait()


def python_argv(*args: str) -> list[str]:
    """argv that runs the ``pacs`` CLI with this interpreter."""
    return [sys.executable, "-m", "admin.cli", *args]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
