"""Entry point: ``pyflanneld`` and ``python -m pyflannel``.

The only place that exits the process. Exit statuses: 0 after SIGTERM/SIGINT or
when our lease was revoked (as flanneld), 0 for ``-h`` and ``--version``, 2 for a
command-line error (flanneld exits 0 there, which hides typos in unit files), 1 for
any other error, with a message that says what to fix.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from pyflannel import __version__
from pyflannel.cli import HelpRequested, UsageError, ignored_arguments, parse_args, usage
from pyflannel.errors import ConfigError, PyflannelError
from pyflannel.options import Options, validate
from pyflannel.registry.etcdsettings import EtcdSettings, needs_tls
from pyflannel.tlsfree import forgo_ssl

logger = logging.getLogger("pyflannel")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the daemon; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "pyflanneld"
    if prog in ("__main__.py", "-c", "-m"):
        prog = "pyflanneld"
    try:
        options = parse_args(args, os.environ)
    except HelpRequested:
        sys.stderr.write(usage(prog))
        return 0
    except UsageError as exc:
        sys.stderr.write(f"{exc}\n{usage(prog)}")
        return 2
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    if options.version:
        sys.stderr.write(f"{__version__}\n")
        return 0
    return _run(options, ignored_arguments(args))


def _run(options: Options, ignored: Sequence[str]) -> int:
    if not needs_tls(EtcdSettings.from_options(options)):
        forgo_ssl()  # before anything imports asyncio (structlog does)
    import asyncio

    from pyflannel.logsetup import setup_logging

    setup_logging(verbosity=options.v, fmt=options.log_format)
    if ignored:
        # Go's flag parsing stops at the first non-flag word, so `-ip-masq false --iface=x`
        # silently drops everything from `false` on; say so instead.
        logger.warning(
            "ignoring command-line arguments after the first non-flag: %s", " ".join(ignored)
        )
    try:
        validate(options)
        from pyflannel import gcpolicy
        from pyflannel.daemon import run_daemon

        gcpolicy.tune()
        outcome = asyncio.run(run_daemon(options))
    except (PyflannelError, BaseExceptionGroup) as exc:
        leaves = _leaves(exc)
        if not all(isinstance(leaf, PyflannelError) for leaf in leaves):
            raise
        for leaf in leaves:
            logger.error("%s", leaf)
        return 1
    except KeyboardInterrupt:
        return 0
    logger.info("Exiting cleanly (%s)", outcome.reason)
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def console() -> None:
    """Console-script wrapper that exits with :func:`main`'s status."""
    sys.exit(main())


if __name__ == "__main__":
    console()
