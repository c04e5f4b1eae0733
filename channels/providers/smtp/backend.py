"""``EmailBackend`` over the SMTP wire path: what ``channels.providers.email.EmailBackend``
is when Django's ``EMAIL_BACKEND`` is its SMTP backend (the default, configured by
``EMAIL_URL``).

A batch takes the process's kept session (``pool``), writes every message of a chunk on
it (``session``: pipelined when the server allows), and gives it back on ``close`` for
the next batch. When the connection is lost mid-chunk, the messages whose content never
left are sent once more on a new connection; after a second loss they are transient.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from .. import (
    OutboundMessage,
    PermanentProviderError,
    ProviderError,
    SendResult,
    TransientProviderError,
)
from ..email import EmailBackend
from .message import envelope_address, message_bytes
from .pool import session_give_back, session_take
from .session import Envelope, SmtpSession, Wire, WireOutcome, crlf_content, wire_address

__all__ = ["SmtpEmailBackend"]

# A chunk goes on at most this many connections: the first, and one more after a loss.
CONNECTIONS_PER_CHUNK = 2


class SmtpEmailBackend(EmailBackend):
    """Sends the chunk on one SMTP session kept by the worker process."""

    session: SmtpSession | None = None

    def open(self) -> None:
        """Take the process's session; ``TransientProviderError`` when the server cannot be
        reached (the whole batch should be retried later)."""
        if self.session is not None:
            return
        try:
            self.session = session_take()
        except OSError as exc:  # smtplib.SMTPException is an OSError
            raise TransientProviderError(f"Cannot connect to the mail server: {exc}") from exc

    def close(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session_give_back(session)

    @functools.cached_property
    def _envelope_sender(self) -> bytes | PermanentProviderError:
        try:
            return wire_address(envelope_address(self._sender_text))
        except ValueError as exc:
            return PermanentProviderError(f"Cannot build the email: {exc}")

    def send(self, message: OutboundMessage) -> SendResult:
        [outcome] = self.send_batch([message])
        if isinstance(outcome, ProviderError):
            raise outcome
        return outcome

    def send_batch(self, messages: Sequence[OutboundMessage]) -> list[SendResult | ProviderError]:
        outcomes: list[SendResult | ProviderError] = []
        sender = self._envelope_sender
        if isinstance(sender, ProviderError):
            return [sender] * len(messages)
        envelopes: list[Envelope] = []
        positions: list[int] = []
        reply_to = self._reply_to or ()
        for message in messages:
            message_id = self._message_id_template.format(message.delivery_id)
            try:
                content = message_bytes(
                    message, sender=self._sender_text, reply_to=reply_to, message_id=message_id
                )
                recipient = wire_address(envelope_address(message.to))
            except ValueError as exc:  # e.g. a header with a newline in it
                outcomes.append(PermanentProviderError(f"Cannot build the email: {exc}"))
                continue
            positions.append(len(outcomes))
            outcomes.append(SendResult(provider_message_id=message_id.strip("<>")))
            envelopes.append(Envelope(sender, recipient, crlf_content(content)))
        if not envelopes:
            return outcomes
        opened_here = self.session is None
        try:
            answers = self._deliver(envelopes)
        finally:
            if opened_here:
                self.close()
        for position, answer in zip(positions, answers, strict=True):
            if answer is not Wire.ACCEPTED:
                assert isinstance(answer, ProviderError)
                outcomes[position] = answer
        return outcomes

    def _deliver(self, envelopes: Sequence[Envelope]) -> list[WireOutcome]:
        """Every envelope's outcome, on this backend's session and, after a loss, once more
        on a new one for the messages whose content never left."""
        answers: list[WireOutcome] = [Wire.UNSENT] * len(envelopes)
        lost = ""
        for _ in range(CONNECTIONS_PER_CHUNK):
            unsent = [i for i, answer in enumerate(answers) if answer is Wire.UNSENT]
            if not unsent:
                break
            try:
                self.open()
            except TransientProviderError as error:
                for i in unsent:
                    answers[i] = error
                return answers
            session = self.session
            assert session is not None
            delivered = session.deliver([envelopes[i] for i in unsent])
            for i, answer in zip(unsent, delivered, strict=True):
                answers[i] = answer
            if session.lost:
                lost = session.lost
                self.close()  # let go of the lost session; open() takes another
        failed = TransientProviderError(f"Mail server connection failed: {lost}")
        return [failed if answer is Wire.UNSENT else answer for answer in answers]
