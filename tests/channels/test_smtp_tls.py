"""The SMTP wire path's handshake against aiosmtpd (a real third-party server, without
PIPELINING): STARTTLS and implicit TLS with a self-signed certificate the client trusts
through the default context (SSL_CERT_FILE), and AUTH PLAIN and LOGIN."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from django.test import override_settings

from channels.choices import ChannelKind
from channels.providers import OutboundMessage, SendResult, TransientProviderError, get_backend
from channels.providers.smtp import sessions_close
from channels.providers.smtp.backend import SmtpEmailBackend
from tests.channels.factories import MessagePresetFactory
from tests.conftest import free_port
from tests.tls_support import self_signed_certificate

USER, PASSWORD = "salvo", "s3cret-pass"
EMAIL_BACKEND = "channels.providers.email.EmailBackend"


@pytest.fixture(autouse=True)
def no_kept_sessions() -> Iterator[None]:
    sessions_close()
    yield
    sessions_close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((mechanism, login))
        return AuthResult(success=(login, password) == (USER, PASSWORD), handled=False)


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def outbound(to: str) -> OutboundMessage:
    return OutboundMessage(
        delivery_id=6_000_000, channel=ChannelKind.EMAIL, to=to, subject="TLS", body="Hello"
    )


def send(messages: list[OutboundMessage]) -> list[Any]:
    preset = MessagePresetFactory.build(
        channel=ChannelKind.EMAIL, backend=EMAIL_BACKEND, from_email="news@example.com"
    )
    with get_backend(preset) as backend:
        assert isinstance(backend, SmtpEmailBackend)
        assert backend.session is not None
        assert not backend.session.pipelining  # aiosmtpd does not advertise it
        return backend.send_batch(messages)


def running(controller: Controller) -> Iterator[Controller]:
    controller.start()
    try:
        yield controller
    finally:
        # QUIT the kept session first: aiosmtpd's stop waits for an open TLS session's end.
        sessions_close()
        controller.stop()


@pytest.mark.parametrize(
    ("implicit", "mechanism"),
    [(False, "PLAIN"), (False, "LOGIN"), (True, "PLAIN")],
    ids=["starttls-plain", "starttls-login", "implicit-tls-plain"],
)
def test_tls_and_auth_then_the_messages_go(certificate, monkeypatch, implicit, mechanism):
    # The client trusts the certificate through Django's default context.
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    recorder = Recorder()
    port = free_port()
    tls = server_context(certificate)
    controller = Controller(
        recorder,
        hostname="127.0.0.1",
        port=port,
        server_hostname="127.0.0.1",
        ssl_context=tls if implicit else None,
        tls_context=None if implicit else tls,
        require_starttls=not implicit,
        authenticator=recorder.authenticate,
        # aiosmtpd does not count implicit TLS as TLS for AUTH: only STARTTLS.
        auth_require_tls=not implicit,
        auth_exclude_mechanism=["PLAIN"] if mechanism == "LOGIN" else ["LOGIN"],
    )
    settings = {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": port,
        "EMAIL_HOST_USER": USER,
        "EMAIL_HOST_PASSWORD": PASSWORD,
        "EMAIL_USE_TLS": not implicit,
        "EMAIL_USE_SSL": implicit,
        "EMAIL_TIMEOUT": 5.0,
    }
    with override_settings(**settings):
        for _ in running(controller):
            outcomes = send([outbound("a@example.com"), outbound("b@example.com")])
            again = send([outbound("c@example.com")])  # the kept, encrypted session

    assert [type(o) for o in outcomes + again] == [SendResult] * 3
    assert recorder.logins == [(mechanism, USER)]  # one handshake for both batches
    assert [rcpt for _, rcpt, _ in recorder.messages] == [
        ["a@example.com"],
        ["b@example.com"],
        ["c@example.com"],
    ]


def test_a_wrong_password_is_transient_for_the_whole_chunk(certificate, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    recorder = Recorder()
    port = free_port()
    controller = Controller(
        recorder,
        hostname="127.0.0.1",
        port=port,
        server_hostname="127.0.0.1",
        tls_context=server_context(certificate),
        require_starttls=True,
        authenticator=recorder.authenticate,
        auth_require_tls=True,
        auth_exclude_mechanism=["LOGIN"],
    )
    with override_settings(
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=port,
        EMAIL_HOST_USER=USER,
        EMAIL_HOST_PASSWORD="wrong",
        EMAIL_USE_TLS=True,
        EMAIL_USE_SSL=False,
        EMAIL_TIMEOUT=5.0,
    ):
        for _ in running(controller):
            preset = MessagePresetFactory.build(channel=ChannelKind.EMAIL, backend=EMAIL_BACKEND)
            outcomes = get_backend(preset).send_batch([outbound("a@example.com")] * 2)

    assert [type(o) for o in outcomes] == [TransientProviderError] * 2
    assert outcomes[0].reason.startswith("Cannot connect to the mail server: ")
    assert "535" in outcomes[0].reason
    assert recorder.messages == []
