"""Drop-in command lines: `triserve tritonserver ...`, `triserve torchserve ...` and
`triserve tensorflow_model_server ...` take those servers' own flags, spellings and default ports,
and run `triserve serve` with the equivalent options (only that server's front ends).

Each server module has `add_arguments(parser)` (its flags), `plan(args) -> Plan` (the `triserve
serve` arguments they mean) and `main(argv)` (the command; also the console script of the
`triserve-dropin` distribution, dropin/ in the repository). A flag triserve does not implement is
accepted with one warning naming it, or refused (exit 2) where ignoring it would change what the
server answers; the README lists which.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

# name -> module: the drop-in subcommands of `triserve`, and the console scripts of the same names.
SERVERS = {
    "tritonserver": "triserve.dropin.triton",
    "torchserve": "triserve.dropin.torchserve",
    "tensorflow_model_server": "triserve.dropin.tfserving",
}


class Refused(Exception):
    """A flag whose effect triserve cannot give, and ignoring it would change the answers."""


@dataclass
class Plan:
    """What a drop-in command line asks: `triserve serve` arguments, and the warnings to print."""

    server: str
    serve_args: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    _options: Any = field(default=None, repr=False, compare=False)

    def options(self):
        """The typed options of `triserve serve <serve_args>` (built once); a broken --ts-config raises ServerError."""
        from triserve.cli import parser
        from triserve.options import from_args

        if self._options is None:
            self._options = from_args(parser().parse_args(["serve", *self.serve_args]))
        return self._options


@dataclass(frozen=True)
class Unimplemented:
    flag: str  # "--rate-limit"
    dest: str
    refuse: Callable[[Any], bool] | None = None  # value -> whether it is refused (None: only warned)
    why: str = ""  # why a refused value cannot be ignored


class Flags:
    """The flags of one server that triserve does not implement: each accepted with one warning,
    or refused where `refuse(value)` holds. Their default is None: not given."""

    def __init__(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup, server: str) -> None:
        self.parser = parser
        self.server = server
        self.flags: list[Unimplemented] = []

    def ignored(self, flag: str, help: str, **kwargs: Any) -> None:
        action = self.parser.add_argument(
            flag, default=None, help=f"{help} (default: not set; not implemented by triserve: accepted with a"
                                     " warning and ignored)", **kwargs)
        self.flags.append(Unimplemented(flag, action.dest))

    def refused(self, flag: str, help: str, why: str, when: Callable[[Any], bool] = lambda v: True,
                condition: str = "", **kwargs: Any) -> None:
        refused = f"refused{' ' + condition if condition else ''}: {why}"
        action = self.parser.add_argument(flag, default=None, help=f"{help} (default: not set; not supported by"
                                                                    f" triserve: {refused})", **kwargs)
        self.flags.append(Unimplemented(flag, action.dest, when, why))

    def check(self, args: argparse.Namespace) -> list[str]:
        """Warnings for the ignored flags given; Refused for the first refused one."""
        warnings = []
        for flag in self.flags:
            value = getattr(args, flag.dest)
            if value is None:
                continue
            shown = flag.flag if value is True else f"{flag.flag}={','.join(map(str, value)) if isinstance(value, list) else value}"
            if flag.refuse is not None:
                if flag.refuse(value):
                    raise Refused(f"{shown} is not supported by triserve: {flag.why}")
                continue  # a value that asks for what triserve does anyway (--grpc-use-ssl=false)
            warnings.append(f"{self.server} flag {flag.flag} is not implemented by triserve; ignored")
        return warnings


def truth(text: str) -> bool:
    """A boolean flag value as these servers read them: true/false, on/off, 1/0, yes/no."""
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "on", "yes", "t", "y"):
        return True
    if lowered in ("0", "false", "off", "no", "f", "n"):
        return False
    raise argparse.ArgumentTypeError(f"invalid value for bool option: {text}")


def is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and truth(value))


def ports(chosen: dict[str, int]) -> list[str]:
    """`triserve serve` port flags: the chosen front ends on their ports, every other one off."""
    from triserve.options import FRONTENDS

    args = []
    for name in FRONTENDS:
        args += [f"--{name.replace('_', '-')}-port", str(chosen.get(name, 0))]
    return args


def run(plan: Plan) -> int:
    """Serve what the plan asks, after its warnings."""
    from triserve.cli import run_serve
    from triserve.errors import ServerError

    for warning in plan.warnings:
        print(f"triserve {plan.server}: warning: {warning}", file=sys.stderr, flush=True)
    try:
        options = plan.options()
    except ServerError as e:
        print(f"triserve {plan.server}: {e.message}", file=sys.stderr)
        return 1
    return run_serve(options)


def parse(prog: str, add_arguments: Callable[[argparse.ArgumentParser], Any], argv: list[str] | None,
          description: str) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False, usage="%(prog)s [options]")
    add_arguments(p)
    return p, p.parse_args(argv)


def planned(p: argparse.ArgumentParser, build: Callable[[], Plan]) -> Plan:
    """The plan, or exit 2 with the parser's usage line where a flag is refused."""
    try:
        return build()
    except Refused as e:
        p.error(str(e))
        raise  # not reached: error() exits
