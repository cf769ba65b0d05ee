"""`triserve torchserve ...`: TorchServe's command line (0.12), served by triserve on TorchServe's
front ends only: inference 8080, management 8081, metrics 8082 and gRPC 7070/7071 (where triserve
has them), on 127.0.0.1 unless config.properties gives other addresses.

As TorchServe: `--start` (the default action) runs the server in the background and returns,
recording its pid in `$TMPDIR/.model_server.pid`; `--foreground` keeps it in this process; `--stop`
stops the one recorded. The config file is `--ts-config`, else `$TS_CONFIG_FILE`, else
`./config.properties` if there is one. Token authorization is on unless `--disable-token-auth` or
`disable_token_authorization=true` (keys in ./key_file.json); the model API is off unless
`--enable-model-api` or `enable_model_api=true`."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from triserve.dropin import Flags, Plan, Refused, parse, planned, ports, run

NAME = "torchserve"
DESCRIPTION = "TorchServe's command line, served by triserve (TorchServe's front ends only)"
STOP_TIMEOUT_S = 60.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--version", action="store_true", help="print triserve's version and exit (default off)")
    p.add_argument("--start", action="store_true",
                   help="start the model server in the background (the default action; default off)")
    p.add_argument("--stop", action="store_true", help="stop the model server started by --start (default off)")
    p.add_argument("--foreground", action="store_true",
                   help="run in the foreground, in this process (default off: --start returns at once)")
    p.add_argument("--model-store", metavar="DIR",
                   help="folder of model archives (default: config.properties model_store; one of the two is required)")
    p.add_argument("--models", nargs="+", default=[], metavar="MODEL",
                   help="archives loaded at start: NAME=FILE.mar, FILE.mar, or all (default: config.properties"
                        " load_models, else none)")
    p.add_argument("--ts-config", metavar="FILE",
                   help="config.properties (default: $TS_CONFIG_FILE, else ./config.properties if present)")
    p.add_argument("--ncs", "--no-config-snapshots", dest="ncs", action="store_true",
                   help="no config snapshots (default off; triserve never writes snapshots)")
    p.add_argument("--disable-token-auth", action="store_true",
                   help="serve without token authorization (default off: tokens required, keys in key_file.json)")
    p.add_argument("--enable-model-api", action="store_true",
                   help="allow registering and unregistering models (default off: 405)")
    p.add_argument("--allow-custom-handlers", action="store_true",
                   help="triserve's own flag: run Python handler code from archives (default off: such archives"
                        " fail to load)")
    flags = Flags(p.add_argument_group("accepted but not implemented, or refused"), NAME)
    p.set_defaults(unimplemented=flags)
    flags.ignored("--log-config", "a log4j2 configuration", metavar="FILE")
    flags.ignored("--cpp-log-config", "the C++ backend's log configuration", metavar="FILE")
    flags.ignored("--workflow-store", "folder of workflow archives (workflows are not served)", metavar="DIR")
    flags.refused("--plugins-path", "folder of Java plugins (endpoints, authorization)", metavar="DIR",
                  why="triserve runs no Java plugins, and a plugin's endpoints or checks would be missing")


def config_file(args: argparse.Namespace) -> Path | None:
    """TorchServe's order: --ts-config, $TS_CONFIG_FILE, ./config.properties."""
    if args.ts_config:
        return Path(args.ts_config)
    if os.environ.get("TS_CONFIG_FILE"):
        return Path(os.environ["TS_CONFIG_FILE"])
    local = Path("config.properties")
    return local if local.is_file() else None


def plan(args: argparse.Namespace) -> Plan:
    from triserve import ts_config
    from triserve.errors import ServerError
    from triserve.options import DEFAULT_PORTS, FRONTENDS

    warnings = args.unimplemented.check(args)
    config = config_file(args)
    values: dict[str, str] = {}
    if config is not None:
        try:
            values = ts_config.parse_properties(config.read_text(encoding="utf-8"))
        except OSError as e:
            raise Refused(f"cannot read --ts-config {config}: {e.strerror}") from None
    if not args.model_store and not values.get("model_store"):
        raise Refused("--model-store is required (or model_store in config.properties)")
    serve: list[str] = []
    if args.model_store:
        serve += ["--model-store", args.model_store]
    if args.models:
        serve += ["--models", *args.models]
    if config is not None:
        serve += ["--ts-config", str(config)]
    disabled = args.disable_token_auth or values.get("disable_token_authorization", "").strip().lower() == "true"
    if not disabled:
        serve += ["--enable-token-auth"]
    if args.enable_model_api:
        serve += ["--enable-model-api"]
    if args.allow_custom_handlers:
        serve += ["--allow-custom-handlers"]
    # TorchServe's front ends on their defaults (config.properties may move them); the others off.
    serve += ports({name: DEFAULT_PORTS[name] for name in FRONTENDS if name.startswith("torchserve_")})
    result = Plan(NAME, serve, warnings)
    try:
        result.options()  # a config.properties that cannot be used fails here, before any daemon starts
    except ServerError as e:
        raise Refused(e.message) from None
    return result


def pid_file() -> Path:
    """Where TorchServe records the running server (tempfile's TMPDIR)."""
    return Path(tempfile.gettempdir()) / ".model_server.pid"


def running_pid() -> int | None:
    """The pid in the pid file, if that process is alive."""
    import psutil

    try:
        pid = int(pid_file().read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if psutil.pid_exists(pid) else None


def _is_triserve(pid: int) -> bool:
    import psutil

    try:
        command = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    # `python -m triserve torchserve ...` (what --start runs), or the `torchserve` console script
    return any("triserve" in part for part in command) or any(Path(part).name == NAME for part in command[:2])


def stop() -> int:
    pid = running_pid()
    if pid is None:
        print("TorchServe is not currently running.")
        pid_file().unlink(missing_ok=True)
        return 0
    if not _is_triserve(pid):
        print(f"the process {pid} recorded in {pid_file()} is not triserve; not stopping it", file=sys.stderr)
        return 1
    import psutil

    os.kill(pid, signal.SIGTERM)  # triserve finishes in-flight requests, then exits
    try:
        psutil.Process(pid).wait(STOP_TIMEOUT_S)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        print(f"TorchServe (pid {pid}) did not stop within {STOP_TIMEOUT_S:g} s", file=sys.stderr)
        return 1
    pid_file().unlink(missing_ok=True)
    print("TorchServe has stopped.")
    return 0


def start(argv: list[str], result: Plan, foreground: bool, prog: str = NAME) -> int:
    # (the background server itself, --foreground, finds the pid its parent wrote: its own)
    if running_pid() not in (None, os.getpid() if foreground else None):
        print("TorchServe is already running, please use torchserve --stop to stop TorchServe.", file=sys.stderr)
        return 1
    if foreground:
        pid_file().write_text(str(os.getpid()))
        try:
            return run(result)
        finally:
            if running_pid() == os.getpid():
                pid_file().unlink(missing_ok=True)
    # The background server: this command line again, in the foreground of a process of its own
    # session (it outlives this one; its log goes where this one's goes, as TorchServe's does).
    child_args = [a for a in argv if a != "--start"] + ["--foreground"]
    child = subprocess.Popen([sys.executable, "-m", "triserve", NAME, *child_args],
                             stdin=subprocess.DEVNULL, start_new_session=True)
    pid_file().write_text(str(child.pid))  # the child writes the same pid; --stop works at once
    print(f"{prog}: started in the background (pid {child.pid}); stop it with `{prog} --stop`", flush=True)
    return 0


def main(argv: list[str] | None = None, prog: str = NAME) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p, args = parse(prog, add_arguments, argv, DESCRIPTION)
    if args.version:
        from triserve import __version__

        print(f"TorchServe Version is triserve {__version__}")
        return 0
    if args.stop:
        return stop()
    result = planned(p, lambda: plan(args))
    return start(argv, result, args.foreground, prog)


def parse_plan(argv: list[str], prog: str = NAME) -> Plan:
    p, args = parse(prog, add_arguments, argv, DESCRIPTION)
    return planned(p, lambda: plan(args))


def console() -> None:
    """The `torchserve` console script (distribution triserve-dropin)."""
    raise SystemExit(main())
