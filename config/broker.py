"""The embedded default's zero-server broker: kombu's filesystem transport, made safe.

kombu's ``filesystem://`` transport creates a message file and then writes it, and a reader
that lists the folder in between takes the empty file and fails with ``JSONDecodeError``
(kombu#1551, open upstream): a Celery worker dies with "Unrecoverable error" and the task
is lost. It also moves a taken file to the system's temporary folder, which may be another
filesystem (a copy, not a rename: two readers can then both take it), and it forgets a
taken message whose worker dies before acknowledging it.

This transport keeps kombu's folder layout and names (``<ms>_<uuid>.<queue>.msg`` in the
queue folder) and works like a Maildir:

* a message is written whole under a temporary name in the ``staging`` folder and then
  renamed into the queue folder, so a reader sees either no file or the complete file;
* a reader takes a message by renaming it into its own ``claims/<owner>`` folder (only one
  rename of a file succeeds), and deletes it when the message is acknowledged; rejected or
  given back at shutdown, the message goes back to the queue;
* a consumer holds a lock on ``claims/<owner>.lock`` while it lives; every consumer looks
  for claim folders whose lock is free (their process died, e.g. SIGKILL) now and then and
  puts their messages back in the queue, so a message taken by a dead worker is delivered
  again, as Redis does after its visibility timeout;
* a file that cannot be read or parsed (written by some other writer, or damaged) is put
  back and tried again at the next poll; one that still cannot be parsed after
  ``UNREADABLE_GRACE_S`` since it was last written goes to the ``quarantine`` folder with an
  error in the log. A message file is never deleted unread.

Every folder must be on one filesystem (renames are atomic only there); by default they sit
inside the queue folder. Power loss is out of scope, as for SQLite with
``synchronous=NORMAL``: nothing here calls fsync.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from queue import Empty
from typing import IO, Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads
from kombu.utils.objects import cached_property
from kombu.utils.scheduling import FairCycle

logger = logging.getLogger(__name__)

#: A message file that cannot be parsed this long after it was last written is quarantined.
UNREADABLE_GRACE_S = 30.0
#: How often a consumer looks for the claims of dead consumers.
ORPHAN_SCAN_INTERVAL_S = 5.0
#: The name every message file ends with, after the queue's name.
MESSAGE_SUFFIX = ".msg"


def _queue_of(filename: str) -> str | None:
    """The queue a message file belongs to (kombu's ``<ms>_<uuid>.<queue>.msg``)."""
    _, dot, rest = filename.partition(".")
    if not dot or not rest.endswith(MESSAGE_SUFFIX):
        return None
    return rest[: -len(MESSAGE_SUFFIX)]


def _try_lock(file: IO[bytes]) -> bool:
    """Take the file's lock without waiting; False when a live process holds it.

    POSIX record locks (not flock): they are not inherited by forked children, so a worker's
    pool processes never keep a dead worker's claims alive, and the kernel drops them when
    their process dies, however it dies."""
    try:
        fcntl.lockf(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class QueuesInOrder(FairCycle):
    """Each poll tries the queues from the first, in the order they were consumed: a message
    of an earlier queue always goes before those of later ones (kombu's Redis transport
    does the same with ``queue_order_strategy="priority"``)."""

    def get(self, callback: Any, **kwargs: Any) -> Any:
        self.pos = 0
        return super().get(callback, **kwargs)


class Channel(filesystem.Channel):
    """kombu's filesystem channel, writing by rename and claiming what it reads; with the
    transport option ``queue_order_strategy="priority"``, it reads its queues in order."""

    _owner: str | None = None
    _owner_pid = 0
    _owner_lock: IO[bytes] | None = None
    _claims: dict[str, Path]
    _last_orphan_scan = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._claims = {}
        super().__init__(*args, **kwargs)

    def _reset_cycle(self) -> None:
        if self.transport_options.get("queue_order_strategy") == "priority":
            self._cycle = QueuesInOrder(self._get_and_deliver, self._active_queues, Empty)
        else:
            super()._reset_cycle()

    # --- folders ------------------------------------------------------------------------

    @cached_property
    def staging_folder(self) -> Path:
        return self._folder("staging_folder", Path(self.data_folder_out) / ".staging")

    @cached_property
    def claims_folder(self) -> Path:
        return self._folder("claims_folder", Path(self.data_folder_in) / ".claims")

    @cached_property
    def quarantine_folder(self) -> Path:
        return self._folder("quarantine_folder", Path(self.data_folder_in) / ".quarantine")

    def _folder(self, option: str, default: Path) -> Path:
        folder = Path(self.transport_options.get(option) or default)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # --- writing ------------------------------------------------------------------------

    # kombu's own stubs disagree on the argument's name (message, payload).
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Write the message whole under a temporary name, then rename it into the queue."""
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}{MESSAGE_SUFFIX}"
        staged = self.staging_folder / name
        try:
            with open(staged, "xb") as file:
                file.write(str_to_bytes(dumps(payload)))
            os.rename(staged, Path(self.data_folder_out) / name)
        except OSError as exc:
            with contextlib.suppress(OSError):
                staged.unlink()
            raise ChannelError(f"Cannot add {name!r} to the queue folder") from exc

    # --- reading ------------------------------------------------------------------------

    def _claim_folder(self) -> Path:
        """This consumer's claims folder, created with its lock on first use."""
        if self._owner is None or self._owner_pid != os.getpid():
            # A forked child (a pool process) never shares its parent's claims.
            self._claims = {}
            owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            # Lock first, then make the lock visible under its real name: a lock file is
            # never seen unlocked while its owner lives.
            staged = self.staging_folder / f"{owner}.lock"
            lock = open(staged, "wb")  # noqa: SIM115 (held open for the channel's life)
            _try_lock(lock)
            os.rename(staged, self.claims_folder / f"{owner}.lock")
            (self.claims_folder / owner).mkdir()
            self._owner, self._owner_pid, self._owner_lock = owner, os.getpid(), lock
        return self.claims_folder / self._owner

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        """Take the oldest message of the queue that can be read."""
        claims = self._claim_folder()
        if time.monotonic() - self._last_orphan_scan >= ORPHAN_SCAN_INTERVAL_S:
            self.restore_orphaned_claims()
        folder = Path(self.data_folder_in)
        for name in sorted(os.listdir(folder)):
            if _queue_of(name) != queue:
                continue
            claimed = claims / name
            try:
                os.rename(folder / name, claimed)
            except FileNotFoundError:
                continue  # another consumer took it
            payload = self._read(claimed, queue_folder=folder)
            if payload is None:
                continue
            tag = payload.get("properties", {}).get("delivery_tag")
            if tag is None:  # nothing will ever acknowledge it
                self._finish(claimed)
            else:
                self._claims[tag] = claimed
            return payload
        raise Empty()

    def _read(self, claimed: Path, *, queue_folder: Path) -> Any:
        """The claimed file's message; None when it cannot be read (it is then back in the
        queue for the next poll, or quarantined once it stayed unreadable too long)."""
        try:
            data = claimed.read_bytes()
            return loads(bytes_to_str(data))
        except (OSError, ValueError) as error:
            reason = f"{type(error).__name__}: {error}"
        try:
            age = time.time() - claimed.stat().st_mtime
            if age < UNREADABLE_GRACE_S:
                os.rename(claimed, queue_folder / claimed.name)
                return None
            os.rename(claimed, self.quarantine_folder / claimed.name)
        except OSError as error:
            reason += f"; and it could not be moved: {error}"
        logger.error(
            "Broker message %s unreadable for %.0f s (%s): moved to %s",
            claimed.name,
            UNREADABLE_GRACE_S,
            reason,
            self.quarantine_folder,
        )
        return None

    def _finish(self, claimed: Path) -> None:
        """Forget a handled message (kept in the processed folder if asked to)."""
        with contextlib.suppress(FileNotFoundError):
            if self.store_processed:
                shutil.move(claimed, Path(self.processed_folder) / claimed.name)
            else:
                claimed.unlink()

    def _release(self, delivery_tag: str) -> None:
        claimed = self._claims.pop(delivery_tag, None)
        if claimed is not None:
            self._finish(claimed)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        """With ``no_ack`` the taking is the acknowledgement: the claim is dropped at once
        (else it would go back to the queue when this consumer closes)."""
        message = super().basic_get(queue, no_ack=no_ack, **kwargs)
        if message is not None and no_ack and message.delivery_tag is not None:
            self._release(message.delivery_tag)
        return message

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str | None, **kwargs: Any
    ) -> Any:
        """As ``basic_get``: a consumer that acknowledges nothing drops each claim as it
        receives the message."""
        if no_ack:
            handle = callback

            def callback(message: Any) -> Any:
                self._release(message.delivery_tag)
                return handle(message)

        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        super().basic_ack(delivery_tag, multiple=multiple)
        self._release(delivery_tag)

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        super().basic_reject(delivery_tag, requeue=requeue)
        self._release(delivery_tag)

    def _restore(self, message: Any) -> None:
        """Back to the queue (rejected with requeue, or unacknowledged at shutdown): the new
        copy is written before the claimed one is dropped."""
        super()._restore(message)
        self._release(message.delivery_tag)

    # --- dead consumers -----------------------------------------------------------------

    def restore_orphaned_claims(self) -> int:
        """Put the messages claimed by consumers that died back in the queue; how many."""
        self._last_orphan_scan = time.monotonic()
        restored = 0
        for lock_path in self.claims_folder.glob("*.lock"):
            owner = lock_path.name.removesuffix(".lock")
            if owner == self._owner:
                continue  # closing our own lock file would drop our lock
            try:
                lock = open(lock_path, "rb+")  # noqa: SIM115 (closed below)
            except FileNotFoundError:
                continue
            with lock:
                if not _try_lock(lock):
                    continue  # its consumer lives
                restored += self._restore_claims_of(owner)
                with contextlib.suppress(FileNotFoundError):
                    lock_path.unlink()
        if restored:
            logger.warning(
                "Broker: %d message(s) taken by a consumer that died are back in the queue.",
                restored,
            )
        return restored

    def _restore_claims_of(self, owner: str) -> int:
        folder = self.claims_folder / owner
        restored = 0
        with contextlib.suppress(FileNotFoundError):
            for claimed in folder.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    os.rename(claimed, Path(self.data_folder_in) / claimed.name)
                    restored += 1
            folder.rmdir()
        return restored

    def _purge(self, queue: str) -> int:
        """Drop the queue's messages, including those a dead consumer had taken."""
        self.restore_orphaned_claims()
        return int(super()._purge(queue))

    def close(self) -> None:
        """Close the channel (unacknowledged messages go back to the queue), then drop this
        consumer's claims folder and lock."""
        super().close()
        if self._owner is None or self._owner_pid != os.getpid():
            return  # never taken anything, or a forked copy of the consumer's channel
        # Anything still claimed (acknowledged by no one, restored by no one) goes back.
        self._restore_claims_of(self._owner)
        with contextlib.suppress(FileNotFoundError):
            (self.claims_folder / f"{self._owner}.lock").unlink()
        if self._owner_lock is not None:
            self._owner_lock.close()
        self._owner, self._owner_lock = None, None


class Transport(filesystem.Transport):
    """``filesystem://`` with the safe channel above; same transport options, plus
    ``staging_folder``, ``claims_folder``, ``quarantine_folder`` and
    ``queue_order_strategy`` ("round_robin", kombu's default, or "priority")."""

    Channel = Channel
