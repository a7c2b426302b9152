"""``cellsd``: run a cell, run the demo tree, manage the PKI.

cellsd run -c cell.toml [--log-format text|json]
cellsd demo [--dir D]
cellsd pki init --dir D
cellsd pki issue --dir D NAME
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from cellsd.cli import pki_cmd
from cellsd.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def cmd_run(args: argparse.Namespace) -> int:
    from twisted.internet import defer, reactor
    from twisted.logger import Logger, globalLogBeginner
    from twisted.python.failure import Failure

    from cellsd.config import load_settings
    from cellsd.logs import make_observer
    from cellsd.ops.reload import install_reload_on_signal
    from cellsd.service import Listener, freeze_startup_objects, make_service

    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        print(f"cellsd: {args.config}: {e}", file=sys.stderr)
        return EXIT_USAGE
    log_format = args.log_format or settings.log.format
    globalLogBeginner.beginLoggingTo(
        [make_observer(log_format, settings.log.level, _str(settings.log.file))],
        redirectStandardIO=False,
    )
    log = Logger(namespace="cellsd")
    top = make_service(settings, reactor)
    install_reload_on_signal(top, reactor)  # SIGHUP reloads the config file
    status = {"code": EXIT_OK}

    def cannot_listen(failure: Failure) -> None:
        if isinstance(failure.value, defer.FirstError):
            failure = failure.value.subFailure
        log.failure("cannot listen; stopping", failure)
        status["code"] = EXIT_FAILED
        reactor.stop()

    top.startService()
    freeze_startup_objects()
    listeners = [s for s in top if isinstance(s, Listener)]
    defer.gatherResults([s.listening for s in listeners], consumeErrors=True).addErrback(
        cannot_listen
    )
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.callWhenRunning(_stop_once_on_signals, reactor)
    log.info("cell {cell} started", cell=settings.cell.name)
    reactor.run()
    return status["code"]


def _stop_once_on_signals(reactor: Any) -> None:
    """SIGTERM and SIGINT stop the cell; a second one while it stops (a
    terminal's Ctrl-C reaches the whole process group, and `cellsd demo`
    forwards a TERM too) is logged, not a ReactorNotRunning traceback."""
    import signal

    from twisted.internet.error import ReactorNotRunning
    from twisted.logger import Logger

    log = Logger(namespace="cellsd")

    def stop() -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            log.info("already stopping")

    def received(signum: int, frame: object) -> None:
        log.info("{signal}: stopping", signal=signal.Signals(signum).name)
        reactor.callFromThread(stop)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, received)


def _str(path: object) -> str | None:
    return None if path is None else str(path)


def cmd_demo(args: argparse.Namespace) -> int:
    from cellsd.cli.demo import run_demo

    return run_demo(args.dir, args.cells_per_level)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellsd",
        description="cellsd: Nova cells v1 as a Twisted daemon.",
        epilog="example: cellsd run -c cell.toml",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run one cell in the foreground",
        description="Run one cell in the foreground until SIGTERM or Ctrl-C.",
        epilog="example: cellsd run -c var/api-cell.toml --log-format json",
    )
    run.add_argument("-c", "--config", required=True, help="the cell's TOML file")
    run.add_argument(
        "--log-format", choices=("text", "json"), help="override [log] format (default: text)"
    )
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser(
        "demo",
        help="start a demo tree of cells on loopback",
        description="Start a 3-level tree of cells on loopback with a fresh PKI, "
        "print how to reach it, and stop on Ctrl-C.",
        epilog="example: cellsd demo --dir /tmp/cells",
    )
    demo.add_argument("--dir", default="demo", help="where to put PKI, configs, state")
    demo.add_argument(
        "--cells-per-level", type=int, default=2, help="children of each non-leaf cell"
    )
    demo.set_defaults(func=cmd_demo)

    pki_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
