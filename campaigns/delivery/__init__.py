"""The delivery engine: a Live campaign's channel actions, sent to its audience at once.

How a run goes (every step is a service here; the Celery tasks only call them), one room
per concern:

1. ``planning.execution_start`` — inside the transaction that makes a campaign Live: one
   ``Execution`` of the running version; the planning task runs once that commits.
2. ``planning.execution_plan_step`` — snapshot the audience in profile-id chunks and insert
   one ``Delivery`` row per (action, profile) of the chunk inside the database.
3. ``window.execution_dispatch`` — hand batches to the workers in a bounded window.
4. ``sending.batch_send`` — a chunk at a time: take the due rows with their recipients'
   data, skip the ineligible, render, hand the chunk to the provider in one call, record
   every outcome and move the counters.
5. ``completion.execution_progress`` — after each batch: top up the window, and once
   everything is done complete the execution and the campaign, exactly once; revive what
   stalled, record steps that fail.

``policy`` holds the decisions as plain functions (who is reached, when to try again, what
a provider's answer means); ``sql`` holds every statement that differs between PostgreSQL
and SQLite, and how each database keeps a row from being sent twice. Nothing here imports
the services: completing a campaign goes through ``campaigns.lifecycle``.
"""

from .completion import (
    execution_complete_if_done,
    execution_progress,
    execution_step_failed,
    execution_step_recovered,
    executions_resume_stalled,
    step_name,
    step_policy,
)
from .planning import execution_create, execution_plan_step, execution_start
from .policy import (
    PLANNING_STEP,
    Batch,
    consent_column,
    error_text,
    reachable_profiles,
    render_error_text,
)
from .sending import ActionSender, action_sender, batch_send, recipient_due
from .sql import PROFILE_VALUES, hold_campaign_sends
from .window import execution_dispatch

__all__ = [
    "PLANNING_STEP",
    "PROFILE_VALUES",
    "ActionSender",
    "Batch",
    "action_sender",
    "batch_send",
    "consent_column",
    "error_text",
    "execution_complete_if_done",
    "execution_create",
    "execution_dispatch",
    "execution_plan_step",
    "execution_progress",
    "execution_start",
    "execution_step_failed",
    "execution_step_recovered",
    "executions_resume_stalled",
    "hold_campaign_sends",
    "reachable_profiles",
    "recipient_due",
    "render_error_text",
    "step_name",
    "step_policy",
]
