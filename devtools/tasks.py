"""Celery tasks of the development tools (autodiscovered: ``devtools`` is an installed app
wherever it is importable). Named explicitly, so the name a benchmark queues stays the
one the workers know wherever the code lives."""

from celery import shared_task


@shared_task(name="devtools.naive_delivery_task", acks_late=True)
def naive_delivery_task(execution_id: int, action_id: int, profile_id: int) -> None:
    """The benchmark's baseline: one task per recipient that renders, sends and saves one
    row (see devtools.naive)."""
    from devtools.naive import naive_send_one

    naive_send_one(execution_id=execution_id, action_id=action_id, profile_id=profile_id)
