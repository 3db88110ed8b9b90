"""The flag reference in docs/configuration.md and systemd/pyflanneld.env, from ``FLAGS``.

Both are generated from :data:`pyflannel.cli.FLAGS`, the table the parser itself
uses, so a flag cannot be added, renamed or given a new default without the
documentation following. A unit test compares the files with this output; after a
change to ``FLAGS`` run::

    .venv/bin/python -m pyflannel.ctl.docgen --write
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from pyflannel.cli import FLAGS, FlagKind, FlagSpec

BEGIN = "<!-- BEGIN GENERATED FLAG TABLE (python -m pyflannel.ctl.docgen --write) -->"
END = "<!-- END GENERATED FLAG TABLE -->"
CONFIG_DOC = Path("docs/configuration.md")
ENV_FILE = Path("systemd/pyflanneld.env")

ENV_HEADER = """\
# Settings of pyflanneld, read by systemd (EnvironmentFile= in pyflanneld.service)
# from /etc/pyflannel/pyflanneld.env. Generated from the flag table by
# `python -m pyflannel.ctl.docgen --write`; copy it, then edit the copy.
#
# Each FLANNELD_* variable sets the flag of the same name (FLANNELD_ETCD_ENDPOINTS
# is --etcd-endpoints); a commented-out or empty variable leaves the default shown.
# Values are taken as written (no spaces around "="). A value that does not parse
# stops pyflanneld with a message naming the variable. `pyflannelctl` reads this
# file too, so on this host it talks to the same etcd as the daemon.
# Keep the file mode 0600 when it holds FLANNELD_ETCD_PASSWORD.
"""

ENV_FOOTER = """
# Arguments appended to the command line, for what one variable cannot say, such as
# several interfaces tried in order (FLANNELD_IFACE holds exactly one):
#PYFLANNELD_ARGS=--iface=eth1 --iface=eth2
"""


def env_default(spec: FlagSpec) -> str:
    """The default as it would be written in an environment file (no quotes)."""
    value = spec.default
    if spec.kind is FlagKind.REPEATED:
        return ""
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def env_file() -> str:
    """The whole of systemd/pyflanneld.env."""
    lines = [ENV_HEADER.rstrip("\n")]
    group = None
    for spec in FLAGS:
        if spec.env is None:
            continue
        if spec.group != group:
            group = spec.group
            lines += ["", f"## {group}"]
        lines += [f"# --{spec.name}: {spec.help}", f"#{spec.env}={env_default(spec)}"]
    return "\n".join(lines) + "\n" + ENV_FOOTER


def flag_table() -> str:
    """The markdown tables of every flag, by group, with variable and default."""
    return "\n".join(_flag_table_lines()) + "\n"


def _flag_table_lines() -> Iterator[str]:
    group = None
    for spec in FLAGS:
        if spec.group != group:
            if group is not None:
                yield ""
            group = spec.group
            yield f"#### {group[:1].upper()}{group[1:]}"
            yield ""
            yield "| Flag | Environment variable | Default | Meaning |"
            yield "|---|---|---|---|"
        flag = f"`--{spec.name}{spec.metavar}`"
        env = f"`{spec.env}`" if spec.env else "(none)"
        default = f"`{spec.default_text}`" if spec.kind is not FlagKind.REPEATED else "none"
        yield f"| {flag} | {env} | {default} | {_cell(spec.help)} |"


def _cell(text: str) -> str:
    """Table-cell text: pipes escaped, and ``<prefix>`` kept from reading as HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def splice(document: str, table: str) -> str:
    """``document`` with the text between the markers replaced by ``table``."""
    try:
        head, rest = document.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        raise ValueError(f"the markers {BEGIN!r} and {END!r} are missing") from None
    return f"{head}{BEGIN}\n{table}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """``--write`` regenerates the files under ``--root``; ``--check`` reports stale ones."""
    parser = argparse.ArgumentParser(prog="python -m pyflannel.ctl.docgen")
    parser.add_argument("--root", type=Path, default=Path.cwd())
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    doc, env = args.root / CONFIG_DOC, args.root / ENV_FILE
    wanted = {doc: splice(doc.read_text(encoding="utf-8"), flag_table()), env: env_file()}
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    if args.write:
        for path in stale:
            path.write_text(wanted[path], encoding="utf-8")
            print(f"wrote {path}")
        return 0
    for path in stale:
        print(f"{path} is out of date: run python -m pyflannel.ctl.docgen --write", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
