"""How the demo talks: numbered steps with their duration, commands and their output."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO

INDENT = "      "


class Progress:
    """Prints ``[i/n] title``, the step's details, then ``done in x.x s``."""

    def __init__(self, total: int, out: TextIO | None = None) -> None:
        self.total = total
        self.index = 0
        self.out = out or sys.stdout

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.index += 1
        self.write(f"\n[{self.index}/{self.total}] {title}")
        started = time.monotonic()
        yield
        self.line(f"done in {time.monotonic() - started:.1f} s")

    def write(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def line(self, text: str = "") -> None:
        """A detail line of the current step."""
        self.write(f"{INDENT}{text}" if text else "")

    def command(self, shown: str, output: str) -> None:
        """A command as an operator would type it, then what it printed."""
        self.line(f"$ {shown}")
        for text in output.rstrip("\n").splitlines():
            self.line(f"  {text}")
