"""`fsl`: the parser over every command family, and the one place errors become messages and exit codes."""

from __future__ import annotations

import argparse
import logging
import sys

from fsl.cli import apps, data, experiments, spaces
from fsl.errors import FslError
from fsl.paths import CACHE_NOTE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsl", description="Few-shot multimodal fashion classification: one command per step of the data flow."
    )
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="one step of the data flow (fsl COMMAND --help for its options)",
    )
    for family in (data, experiments, spaces, apps):
        family.add_parsers(commands)
    return parser


class CurrentStderr(logging.StreamHandler):
    """A log handler that writes to sys.stderr as it is when a record comes (a redirect, a test's
    capture), not as it was when the handler was made."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def report_to_stderr() -> None:
    """The library's progress and notes (logger "fsl", INFO and up) go to stderr as "fsl: ..." lines:
    the CLI owns where they go; a Python caller configures logging as it likes."""
    logger = logging.getLogger("fsl")
    logger.setLevel(logging.INFO)
    if not any(isinstance(handler, CurrentStderr) for handler in logger.handlers):
        handler = CurrentStderr()
        handler.setFormatter(logging.Formatter("fsl: %(message)s"))
        logger.addHandler(handler)


def in_flags(error: FslError, parser: argparse.ArgumentParser, command: str) -> str:
    """The message with the parameter it names (as the library names it) replaced by the command's flag."""
    message = str(error)
    if error.parameter is None or not message.startswith(error.parameter):
        return message
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    for action in commands.choices[command]._actions:  # noqa: SLF001 - argparse lists its options nowhere else
        flags = [flag for flag in action.option_strings if flag.startswith("--")]
        if action.dest == error.parameter and flags:
            return flags[0] + message[len(error.parameter) :]
    return message


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    report_to_stderr()
    if CACHE_NOTE:
        print(CACHE_NOTE, file=sys.stderr)
    try:
        args.run(args)
    except FslError as error:
        print(f"fsl {args.command}: error: {in_flags(error, parser, args.command)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fsl {args.command}: interrupted; run it again to resume", file=sys.stderr)
        return 130
    except OSError as error:  # a disk, permission or network fault the user can see and fix
        where = f" ({error.filename})" if error.filename else ""
        print(f"fsl {args.command}: error: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
