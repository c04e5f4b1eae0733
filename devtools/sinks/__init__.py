"""Local sink servers: where tests and benchmarks send real email and HTTP traffic.

One process, one asyncio loop, two loopback servers:

* an SMTP sink for ``channels.providers.email.EmailBackend``: the project's own asyncio
  server (``devtools.sinks.smtp``), cheap per message, that advertises PIPELINING (or, with
  ``--smtp-no-pipelining``, counts the commands a client sends before the previous reply),
  8BITMIME, ENHANCEDSTATUSCODES and SIZE, offers STARTTLS with ``--smtp-tls-cert/-key`` and
  AUTH PLAIN/LOGIN with ``--smtp-auth USER:PASSWORD``, and keeps RFC 5321's limits; it counts
  accepted messages, recipients and duplicates by ``X-Salvo-Delivery-Id``
  (``GET /_sink/smtp`` on the HTTP port, ``RunningSinks.smtp_counters()``);
* an HTTP sink for the SMS, push and webhook backends (any ``POST /<channel>…``), with the
  bulk endpoints of the SMS, push and email HTTP APIs (``POST /<channel>/batch`` with
  ``{"messages": [...]}``, answered with one result per message: see
  ``channels.providers.http``); each message of a bulk request is recorded, and failure
  rules apply, on its own;
* on the same HTTP server, emulations of providers' own APIs, for the backends that drive
  them with the providers' own client libraries: Twilio's Messages API
  (``devtools.sinks.twilio``) and FCM HTTP v1 with its OAuth token endpoint
  (``devtools.sinks.fcm``).
* on the same HTTP port, the send APIs of four email service providers, Mailgun,
  Postmark, SendGrid and Amazon SES (its SigV4 signatures checked), as django-anymail
  calls them (``devtools.sinks.esp``, ``devtools.sinks.ses``).

Every attempt is appended to a JSON-lines record file (``channel``, ``delivery_id``, ``to``,
``status``, ``accepted``, and with ``content`` the headers and body), so other processes can
count what arrived and find duplicates by delivery id.

The HTTP sink honours ``Idempotency-Key`` (per message ``idempotency_key`` in a bulk
request) as real providers do: a key it has already accepted is answered with the first
answer again and is not a new message. Such a repeat is still recorded, with
``"repeat": true``: ``received()`` leaves repeats out (what the recipient got), while
``repeats()`` and ``duplicates()`` count them (what was sent twice). The SMTP sink, like
SMTP itself, has no idempotency key: a repeat there is a second email. Its records of one
read from a connection are written together; without ``content`` the delivery id is found
by a byte search in the header block, not a parse.

The sinks can be told to fail, per recipient pattern (a regular expression searched in the
address, phone, token or URL path):

* ``reject``: HTTP 400 / SMTP 550 (permanent);
* ``flaky`` (``PATTERN:K``): HTTP 503 / SMTP 451 for the first K attempts of each delivery;
* ``throttle`` (``PATTERN:K:S``): HTTP 429 with ``Retry-After: S`` / SMTP 451, first K attempts;
* ``slow`` (``PATTERN:S``): answer after S seconds (to trip client timeouts).

Start it with ``manage.py run_sinks`` (or ``python -m devtools.sinks``), or in tests::

    with running_sinks(reject="invalid") as sink:
        with override_settings(**sink.provider_settings()):
            ...
        assert len(sink.received(channel="sms")) == 3

The package needs neither Django nor a database, so the sink starts fast in its own process
(``running`` imports ``config.processes`` only when it starts one).
"""

from .cli import add_arguments, rules_from_options, serve
from .records import (
    count_duplicates,
    count_duplicates_in,
    first_accepted_at,
    iter_records,
    read_records,
    record_end,
)
from .rules import FailureRules
from .running import RunningSinks, running_sinks

__all__ = [
    "FailureRules",
    "RunningSinks",
    "add_arguments",
    "count_duplicates",
    "count_duplicates_in",
    "first_accepted_at",
    "iter_records",
    "read_records",
    "record_end",
    "rules_from_options",
    "running_sinks",
    "serve",
]
