"""The ``refdiff`` command: ``refdiff demo`` (the main job), plus subcommands added by later
modules. Bad arguments print one line and exit with status 2, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

# subcommand -> (module, one-line help); each module has main(argv) -> int
COMMANDS = {
    "demo": ("refdiff.demo", "guided sampling on an exact Gaussian-mixture model, with a summary"),
    "conventions": ("refdiff.presets", "the presets of the originals (guided-diffusion, CompVis, "
                    "diffusers) next to refdiff's defaults"),
    "check": ("refdiff.testing.cli", "property-test another implementation (diffusers or yours) "
              "against refdiff"),
}


class UsageError(Exception):
    """A bad command-line argument: reported in one line, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose errors (a bad int, an unknown option, a value
    outside ``choices``) raise :class:`UsageError`, so that :func:`main` reports them in one
    line instead of argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def version() -> str:
    from refdiff import __version__

    return f"refdiff {__version__}"


def usage() -> str:
    lines = ["usage: refdiff <command> [options]", "       refdiff --version", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'refdiff <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(version())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"refdiff: unknown command {name!r}; choose from {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as exc:  # an optional dependency of the subcommand
        if exc.name != "hypothesis":
            raise
        print(f'refdiff {name}: needs hypothesis: pip install "refdiff[testing]"',
              file=sys.stderr)
        return 2
    try:
        return int(module.main(rest) or 0)
    except UsageError as exc:
        print(f"refdiff {name}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"refdiff {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
