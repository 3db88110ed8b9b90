"""The iptables binaries: which back end to drive, and running them.

Debian's iptables package ships two back ends side by side: ``iptables-nft*``
(rules in nf_tables) and ``iptables-legacy*`` (the old x_tables), and the
``iptables`` command is an alternative pointing at one of them. Packets traverse
both, so a DROP policy in either drops them: our ACCEPT rules must go where
Docker's DROP went, and Docker uses the ``iptables`` found on PATH. We therefore
follow that command: ``iptables --version`` names its back end ("(nf_tables)" or
"(legacy)"), and we then call that back end's save/restore/check binaries by their
explicit names, so a half-switched alternative (``iptables`` on nft,
``iptables-restore`` still on legacy) cannot split our rules over both. Older
iptables without the suffix names (< 1.8) are plain legacy. When the other back end
holds a FORWARD DROP policy too, the manager warns (see ``other_backend``).

Every command runs with a timeout, since ``--wait`` may block on the xtables lock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from dataclasses import dataclass

from pyflannel.errors import BackendError

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT = 30.0
WAIT_SINCE = (1, 6, 2)
"""iptables-restore learnt ``--wait`` and MASQUERADE ``--random-fully`` in 1.6.2."""

_VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)")
_VARIANTS = {"nf_tables": "nft", "legacy": "legacy"}


class IptablesMissing(BackendError):
    """No usable iptables binary: rules cannot be installed on this host."""


class IptablesFailed(BackendError):
    """An iptables command failed or timed out; the next resync tries again."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode  # -1 when the command did not run to an exit status


@dataclass(frozen=True, slots=True)
class IptablesTool:
    """The binaries of one iptables back end and what its version supports."""

    mode: str  # "nf_tables" or "legacy", as iptables --version names it
    version: tuple[int, int, int]
    iptables: str
    save: str
    restore: str

    @property
    def has_wait(self) -> bool:
        """Whether iptables-restore accepts ``--wait`` (take the xtables lock)."""
        return self.version >= WAIT_SINCE

    @property
    def has_random_fully(self) -> bool:
        """Whether MASQUERADE accepts ``--random-fully`` (go-iptables' test, as flanneld)."""
        return self.version >= WAIT_SINCE

    def describe(self) -> str:
        return "iptables v{}.{}.{} ({})".format(*self.version, self.mode)

    async def save_table(self, table: str) -> str:
        """``iptables-save -t <table>``."""
        return await run_command([self.save, "-t", table])

    async def restore_noflush(self, payload: str) -> None:
        """``iptables-restore --noflush [--wait]``: apply ``payload`` atomically per table."""
        args = [self.restore, "--noflush"] + (["--wait"] if self.has_wait else [])
        await run_command(args, stdin=payload)

    async def check(self, table: str, chain: str, spec: tuple[str, ...]) -> bool:
        """``iptables -C``: whether the kernel holds the rule (1 = absent, or no chain)."""
        args = [self.iptables, "-w", "-t", table, "-C", chain, *spec]
        try:
            await run_command(args)
        except IptablesFailed as exc:
            if exc.returncode == 1:
                return False
            raise
        return True


def parse_version(text: str) -> tuple[tuple[int, int, int], str]:
    """Version and back end from ``iptables --version`` ("iptables v1.8.9 (nf_tables)")."""
    match = _VERSION.search(text)
    if match is None:
        raise IptablesMissing(f"cannot read the iptables version from {text.strip()!r}")
    major, minor, patch = (int(part) for part in match.groups())
    mode = "nf_tables" if "nf_tables" in text else "legacy"
    return (major, minor, patch), mode


def _which(name: str, path: str | None = None) -> str | None:
    """The first executable ``name`` on ``path`` (default PATH), as ``shutil.which``.

    Written out because shutil (with the compression modules it loads) costs the
    daemon about half a megabyte of memory for this one lookup.
    """
    search = os.environ.get("PATH", os.defpath) if path is None else path
    for folder in search.split(os.pathsep):
        candidate = os.path.join(folder or os.curdir, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


async def detect(search_path: str | None = None) -> IptablesTool:
    """The back end the ``iptables`` command on PATH uses (``search_path`` overrides PATH)."""
    main = _which("iptables", path=search_path)
    if main is None:
        raise IptablesMissing("no iptables binary was found on PATH")
    try:
        version, mode = parse_version(await run_command([main, "--version"]))
    except IptablesFailed as exc:
        raise IptablesMissing(f"{main} --version failed: {exc}") from exc
    variant = _VARIANTS[mode]

    def pick(suffix: str) -> str:
        found = _which(f"iptables-{variant}{suffix}", path=search_path)
        found = found or _which(f"iptables{suffix}", path=search_path)
        if found is None:
            raise IptablesMissing(f"iptables{suffix} was not found on PATH next to {main}")
        return found

    return IptablesTool(mode, version, pick(""), pick("-save"), pick("-restore"))


def other_backend(tool: IptablesTool, search_path: str | None = None) -> IptablesTool | None:
    """The save/check binaries of the back end ``tool`` does not use, if installed."""
    other = "legacy" if tool.mode == "nf_tables" else "nf_tables"
    variant = _VARIANTS[other]
    names = [f"iptables-{variant}{suffix}" for suffix in ("", "-save", "-restore")]
    paths = [_which(name, path=search_path) for name in names]
    if None in paths:
        return None
    main, save, restore = (path or "" for path in paths)
    return IptablesTool(other, tool.version, main, save, restore)


async def run_command(args: list[str], stdin: str | None = None) -> str:
    """Run one command to completion; its stdout, or IptablesFailed(message, returncode)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise IptablesFailed(f"cannot run {args[0]}: {exc}", -1) from exc
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise IptablesFailed(f"{' '.join(args)} timed out after {COMMAND_TIMEOUT} s", -1) from None
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
        status = -1 if proc.returncode is None else proc.returncode
        raise IptablesFailed(f"{' '.join(args)} exited with {status}: {message}", status)
    return out.decode(errors="replace")
