"""The options of ``manage.py run_sinks`` and ``python -m devtools.sinks``, and serving
until a signal."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .rules import FailureRules
from .server import SinkServer
from .smtp import DEFAULT_MAX_RECIPIENTS, DEFAULT_SIZE_LIMIT, SmtpOptions

if TYPE_CHECKING:
    from django.core.management.base import OutputWrapper


def _pattern_with_numbers(value: str, count: int) -> tuple[str, list[float]]:
    """``PATTERN[:N[:M]]`` → pattern and up to ``count`` numbers (split from the right, so
    the pattern itself may contain colons).
    """
    parts = value.rsplit(":", count)
    numbers: list[float] = []
    while len(parts) > 1:
        try:
            numbers.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    return ":".join(parts), numbers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``manage.py run_sinks`` and ``python -m devtools.sinks``."""
    env = os.environ.get
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, default=int(env("SALVO_SINK_SMTP_PORT", "1025")))
    parser.add_argument("--http-port", type=int, default=int(env("SALVO_SINK_HTTP_PORT", "8025")))
    parser.add_argument(
        "--record",
        default=env("SALVO_SINK_RECORD", "var/sink-received.jsonl"),
        help="JSON-lines file that gets one line per attempt.",
    )
    parser.add_argument(
        "--fcm-key-file",
        default=env("SALVO_SINK_FCM_KEY_FILE", "var/sink-fcm-key.json"),
        help="Where the FCM emulation writes its service account's key file.",
    )
    parser.add_argument(
        "--no-content", action="store_true", help="Record ids and status only (benchmarks)."
    )
    parser.add_argument("--reject", default=env("SALVO_SINK_REJECT", ""), metavar="PATTERN")
    parser.add_argument("--flaky", default=env("SALVO_SINK_FLAKY", ""), metavar="PATTERN[:K]")
    parser.add_argument(
        "--throttle", default=env("SALVO_SINK_THROTTLE", ""), metavar="PATTERN[:K[:SECONDS]]"
    )
    parser.add_argument("--slow", default=env("SALVO_SINK_SLOW", ""), metavar="PATTERN[:SECONDS]")
    smtp = parser.add_argument_group("SMTP sink")
    smtp.add_argument(
        "--smtp-no-pipelining",
        action="store_true",
        help="Do not advertise PIPELINING; count the commands a client sends early anyway.",
    )
    smtp.add_argument(
        "--smtp-chunking",
        action="store_true",
        help="Advertise CHUNKING (RFC 3030) and take BDAT; off by default.",
    )
    smtp.add_argument("--smtp-tls-cert", default="", metavar="PEM", help="Offer STARTTLS.")
    smtp.add_argument("--smtp-tls-key", default="", metavar="PEM")
    smtp.add_argument(
        "--smtp-auth",
        default=env("SALVO_SINK_SMTP_AUTH", ""),
        metavar="USER:PASSWORD",
        help="Offer AUTH PLAIN and LOGIN, and refuse MAIL before it.",
    )
    smtp.add_argument("--smtp-size-limit", type=int, default=DEFAULT_SIZE_LIMIT, metavar="BYTES")
    smtp.add_argument("--smtp-max-recipients", type=int, default=DEFAULT_MAX_RECIPIENTS)


def smtp_options_from(options: dict[str, Any]) -> SmtpOptions:
    context = None
    if options.get("smtp_tls_cert"):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(options["smtp_tls_cert"], options.get("smtp_tls_key") or None)
    credentials = {}
    if options.get("smtp_auth"):
        user, _, password = options["smtp_auth"].partition(":")
        credentials[user] = password
    return SmtpOptions(
        pipelining=not options.get("smtp_no_pipelining"),
        chunking=bool(options.get("smtp_chunking")),
        size_limit=options.get("smtp_size_limit") or DEFAULT_SIZE_LIMIT,
        max_recipients=options.get("smtp_max_recipients") or DEFAULT_MAX_RECIPIENTS,
        ssl_context=context,
        credentials=credentials,
    )


def rules_from_options(options: dict[str, Any]) -> FailureRules:
    flaky, flaky_numbers = _pattern_with_numbers(options["flaky"] or "", 1)
    throttle, throttle_numbers = _pattern_with_numbers(options["throttle"] or "", 2)
    slow, slow_numbers = _pattern_with_numbers(options["slow"] or "", 1)
    defaults = FailureRules()
    return FailureRules(
        reject=options["reject"] or "",
        flaky=flaky,
        flaky_times=int(flaky_numbers[0]) if flaky_numbers else defaults.flaky_times,
        throttle=throttle,
        throttle_times=int(throttle_numbers[0]) if throttle_numbers else defaults.throttle_times,
        retry_after_s=throttle_numbers[1] if len(throttle_numbers) > 1 else defaults.retry_after_s,
        slow=slow,
        slow_s=slow_numbers[0] if slow_numbers else defaults.slow_s,
    )


def serve(options: dict[str, Any], *, announce: TextIO | OutputWrapper = sys.stdout) -> None:
    """Run the sinks until SIGINT/SIGTERM; print one JSON line with the ports once ready."""

    async def main() -> None:
        sink = SinkServer(
            record=Path(options["record"]),
            rules=rules_from_options(options),
            host=options["host"],
            smtp_port=options["smtp_port"],
            http_port=options["http_port"],
            content=not options["no_content"],
            fcm_key_file=Path(options["fcm_key_file"]),
            smtp_options=smtp_options_from(options),
        )
        await sink.start()
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopped.set)
        ready = {"smtp_port": sink.smtp_port, "http_port": sink.http_port}
        files = {"record": str(sink.record), "fcm_key_file": str(sink.fcm_key_file)}
        announce.write(json.dumps(ready | files) + "\n")
        announce.flush()
        await stopped.wait()
        await sink.stop()

    asyncio.run(main())
