"""The ``refdiff`` command: ``refdiff demo`` (the main job), plus subcommands added by later
modules. Bad arguments print one line and exit with status 2, never a traceback."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help); each module has main(argv) -> int
COMMANDS = {
    "demo": ("refdiff.demo", "guided sampling on an exact Gaussian-mixture model, with a summary"),
    "check": ("refdiff.testing.cli", "property-test another implementation (diffusers or yours) "
              "against refdiff"),
}


class UsageError(Exception):
    """A bad command-line argument: reported in one line, exit status 2."""


def usage() -> str:
    lines = ["usage: refdiff <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'refdiff <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"refdiff: unknown command {name!r}; choose from {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except UsageError as exc:
        print(f"refdiff {name}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
