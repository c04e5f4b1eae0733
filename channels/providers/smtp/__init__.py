"""Email over SMTP at the speed of the wire: RFC 2920 pipelining on a connection that the
worker process keeps between batches.

- ``session``: one connection (Django's SMTP handshake, then the transactions, pipelined
  when the server advertises PIPELINING) and what each reply means for its message;
- ``pool``: the sessions a process keeps between batches, per settings and process;
- ``backend``: ``SmtpEmailBackend``, what ``channels.providers.email.EmailBackend`` is when
  ``EMAIL_BACKEND`` is Django's SMTP backend;
- ``message``: the bytes of one email and its envelope addresses.
"""

from .pool import sessions_close

__all__ = ["sessions_close"]
