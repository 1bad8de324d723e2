"""Command line: argument parsing only; the work happens in replay, app and lookup."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import BinaryIO

import orjson

from egressd import __version__
from egressd.config import Config, config_warnings, load_config
from egressd.errors import ConfigError, EgressdError
from egressd.sources.files import FILE_FORMATS

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INVALID = 2


_CONFIG_HELP = "configuration file (TOML); default: the built-in configuration"


class _Version(argparse.Action):
    """``--version``: the version and the build (compiled or pure Python), then exit."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kw: object) -> None:
        from egressd.build_info import describe  # imports the hot modules: only when asked

        print(f"egressd {__version__} ({describe()})")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="egressd",
        description="Watch what leaves a network; page when data flows where it should not.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and build")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (collectors, detection, metrics, alerts)")
    run.add_argument("--config", "-c", type=Path, help=_CONFIG_HELP)
    run.add_argument("--allow-root", action="store_true", help="allow running as root")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    replay = sub.add_parser("replay", help="replay recorded telemetry and print alert events")
    replay.add_argument("--config", "-c", type=Path, help=_CONFIG_HELP)
    replay.add_argument("--format", "-f", required=True, choices=FILE_FORMATS, help="input format")
    replay.add_argument(
        "--alerts-out", "-o", type=Path, help="write alert events here (default stdout)"
    )
    replay.add_argument(
        "--state", type=Path, help="load learned state from and save it to this file"
    )
    replay.add_argument(
        "--quiet", "-q", action="store_true", help="no progress and no summary on stderr"
    )
    replay.add_argument(
        "--report",
        type=Path,
        metavar="FILE.html",
        help="write a self-contained HTML report (charts, daily totals, alerts with evidence)",
    )
    shown = replay.add_mutually_exclusive_group()
    shown.add_argument(
        "--summary",
        action="store_true",
        help="print egress per group, day and destination, and the alerts, as a table on "
        "stdout instead of alert events",
    )
    shown.add_argument(
        "--json",
        action="store_true",
        help="print the report data as one JSON document on stdout instead of alert events",
    )
    replay.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="input files ('-' for stdin); for nfdump, nfcapd files or directories of them",
    )

    check = sub.add_parser(
        "check-config", help="validate a configuration file (exit 0 valid, 2 not)"
    )
    check.add_argument(
        "--config", "-c", type=Path, required=True, help="the configuration file (TOML) to check"
    )

    lookup = sub.add_parser("lookup", help="show country, region and ASN of addresses")
    lookup.add_argument(
        "--config",
        "-c",
        type=Path,
        help="configuration whose [geo] data, region maps and groups answer; default: the "
        "embedded country data",
    )
    lookup.add_argument("--json", action="store_true", help="one JSON object per address")
    lookup.add_argument("addresses", nargs="+", metavar="ADDRESS", help="IPv4 or IPv6 addresses")

    demo = sub.add_parser(
        "demo", help="send a synthetic exfiltration as NetFlow v9 to a running egressd"
    )
    demo.add_argument(
        "--config",
        "-c",
        type=Path,
        help="the running egressd's configuration: its first [[sources.netflow]] listen "
        "address is the target and its [http] listen address the API to watch",
    )
    demo.add_argument(
        "--target", help="collector address (host:port); default 127.0.0.1:2055 or --config's"
    )
    demo.add_argument(
        "--http", help="egressd's HTTP API (host:port); default 127.0.0.1:9108 or --config's"
    )
    demo.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the alert (default 30)"
    )
    demo.add_argument(
        "--group-source",
        default="10.20.0.17",
        help="source address of the transfer (default 10.20.0.17)",
    )
    demo.add_argument(
        "--destination", default="47.100.23.45", help="destination address (default 47.100.23.45)"
    )
    demo.add_argument(
        "--bytes", default="6GB", help="how much to report as sent (a size: 6GB, 500MB)"
    )

    install = sub.add_parser(
        "install-units",
        help="install the systemd units, the egressd user and an example configuration",
    )
    install.add_argument(
        "--uninstall",
        action="store_true",
        help="stop, disable and remove them (config and state stay)",
    )
    install.add_argument(
        "--root", type=Path, default=Path("/"), help="install into this directory (an image)"
    )

    reload = sub.add_parser(
        "reload",
        help="check the configuration, then make a running egressd reload it and wait until "
        "it is in force (or refused)",
    )
    reload.add_argument("--config", "-c", type=Path, help="check this file first")
    reload.add_argument("--pid", type=int, required=True, help="the daemon's process id")
    reload.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the daemon's answer (default 60)",
    )
    return parser


def _load(path: Path | None) -> Config:
    return load_config(path) if path is not None else Config()


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"egressd: {args.config} is invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    sources = config.sources
    for warning in config_warnings(config):
        print(f"egressd: {args.config}: warning: {warning}", file=sys.stderr)
    print(
        f"egressd: {args.config} is valid: {len(config.groups)} group(s), "
        f"{len(config.networks.local)} local network(s), {len(sources.netflow)} netflow, "
        f"{len(sources.kafka)} kafka, {len(sources.capture)} capture source(s), "
        f"{len(config.alertmanager.urls)} alertmanager(s)"
    )
    cluster = config.cluster
    if not config.alertmanager.urls and cluster.role != "ingest":
        where = f", and appended to {config.alerts.log_path}" if config.alerts.log_path else ""
        print(
            "egressd: no [alertmanager] urls: alerts page no one; they are served on "
            f"/api/v1/alerts and logged{where}"
        )
    if cluster.role == "ingest":
        print(f"egressd: role ingest: flows in, partials out to {cluster.partials_topic}")
    elif cluster.role == "detect":
        print(
            f"egressd: role detect: partials from {cluster.partials_topic} in group "
            f"{cluster.detect_group_id}, state in {cluster.state_directory}"
        )
    return EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    from egressd.replay import replay

    config = _load(args.config)
    terminal = sys.stderr.isatty() and not args.quiet
    progress = sys.stderr if terminal else None
    report = None
    if args.report is not None or args.summary or args.json:
        from egressd.report.collect import ReportCollector

        report = ReportCollector(config.detection.interval)
        if args.report is not None:
            from egressd.report.html import require_report_libraries

            require_report_libraries()  # before the replay, not after an hour of it
            if not args.report.resolve().parent.is_dir():
                raise EgressdError(f"{args.report}: its directory does not exist")
    # With --summary or --json, stdout carries the report; alert events go to --alerts-out.
    to_stdout = not (args.summary or args.json)
    with contextlib.ExitStack() as stack:
        if args.alerts_out is not None:
            try:
                out: BinaryIO = stack.enter_context(open(args.alerts_out, "wb"))
            except OSError as exc:
                raise EgressdError(f"{args.alerts_out}: cannot write: {exc.strerror}") from None
        elif to_stdout:
            out = sys.stdout.buffer
        else:
            out = stack.enter_context(open(os.devnull, "wb"))
        summary = replay(
            config,
            args.format,
            args.inputs,
            out,
            progress=progress,
            state_path=args.state,
            report=report,
        )
    lines = summary.lines()
    if report is not None:
        if args.report is not None:
            from egressd.report.html import write_html

            write_html(args.report, report.data, lines=lines, progress=progress)
            lines.append(f"replay: report written to {args.report}")
        if args.summary:
            from egressd.report.text import render_text

            sys.stdout.write(render_text(report.data))
        elif args.json:
            sys.stdout.buffer.write(orjson.dumps(report.data.to_json(), option=orjson.OPT_INDENT_2))
            sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
    if not args.quiet:
        for line in lines:
            print(line, file=sys.stderr)
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from egressd.app import run_daemon

    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return int(run_daemon(args.config, allow_root=args.allow_root))


def _lookup(args: argparse.Namespace) -> int:
    from egressd.lookup import lookup_main

    config = _load(args.config)
    return int(lookup_main(config, args.addresses, sys.stdout, as_json=args.json))


def _demo(args: argparse.Namespace) -> int:
    from egressd.demo import demo_main

    config = _load(args.config)
    target = args.target
    if target is None:
        netflow = config.sources.netflow
        target = netflow[0].listen if args.config is not None and netflow else "127.0.0.1:2055"
    http = args.http or config.http.listen
    return int(
        demo_main(target, args.group_source, args.destination, args.bytes, http, args.timeout)
    )


def _install_units(args: argparse.Namespace) -> int:
    from egressd.install import install_units_main

    return int(install_units_main(args.root, args.uninstall))


def _reload(args: argparse.Namespace) -> int:
    from egressd.control import reload_main

    return int(reload_main(args.config, args.pid, timeout=args.timeout))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {
        "run": _run,
        "replay": _replay,
        "check-config": _check_config,
        "lookup": _lookup,
        "demo": _demo,
        "install-units": _install_units,
        "reload": _reload,
    }
    if args.command is None:
        _parser().print_help(sys.stderr)
        return EXIT_INVALID
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print("egressd: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    except EgressdError as exc:
        print(f"egressd: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
