"""Soak the embedded stack: web + worker + beat under supervisord, as `make run` starts them,
with the scheduler ticking fast while campaigns are created and activated through the API.

    .venv/bin/python scripts/soak.py [--seconds 180] [--every 2] [--profiles 100]

Runs on the embedded default only (SQLite and the filesystem broker in ``var/soak``, fresh
each run), with every channel sent to the local sinks (``devtools/sinks/``). For
``--seconds`` it creates a campaign every ``--every`` seconds through ``POST
/api/campaigns/`` (email, SMS and webhook to ``--profiles`` profiles; every other one
scheduled 30 s ahead, for the scheduler to start) and activates it through ``POST
…/activate/``. Then it waits for every campaign to complete, stops the stack with SIGTERM
(as a deploy does) and checks:

* no program exited unexpectedly or was restarted (supervisord's log), and the stack
  stopped cleanly (supervisord exit status 0, every program "stopped" with status 0);
* no "Unrecoverable error", traceback or ERROR line in any program's output, and no broker
  message quarantined as unreadable;
* every activated campaign reached Completed, and every delivery was sent exactly once:
  every row sent, each delivery id received once by the sinks, no duplicates.

Prints the figures, then one JSON object as its last line; exits 1 with one line per broken
promise. Bounded in time and in requests; every address is on loopback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

VENV_BIN = BASE_DIR / ".venv" / "bin"
SUPERVISORD_CONF = BASE_DIR / "scripts" / "supervisord.conf"
PROGRAMS = ("web", "worker", "beat")
READY_TIMEOUT_S = 120.0
# Far enough ahead that the activation, queued behind delivery batches, still finds the start
# time in the future when it runs (it returns a campaign whose time has passed to Draft).
SCHEDULED_AHEAD = dt.timedelta(seconds=30)
STOP_TIMEOUT_S = 120.0
# In any program's output, each of these is a broken promise.
FORBIDDEN = re.compile(r"Unrecoverable error|Traceback \(most recent call last\)|[ /]ERROR[/ ]")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Api:
    """The REST API of the running web server, with a DRF token."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token

    def call(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        body = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(
            self.base + path,
            data=body,
            method=method,
            headers={"Authorization": f"Token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")
        except OSError as error:  # no answer at all: a broken promise, reported at the end
            return 0, f"{type(error).__name__}: {error}"


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"soak: {what} not within {timeout:g}s")
        time.sleep(0.2)


def web_answers(base: str) -> bool:
    try:
        urllib.request.urlopen(base + "/api/", timeout=5)
    except urllib.error.HTTPError:
        return True  # 401: it answers
    except OSError:
        return False
    return True


def setup_data(profiles: int) -> str:
    """The soak's user (its token), audience; in the stack's own database."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from segments.models import Profile

    user = get_user_model().objects.create_superuser("soak", "soak@example.com", "soak")
    Profile.objects.bulk_create(
        Profile(
            external_id=f"soak-{n:05d}",
            email=f"soak-{n:05d}@example.com",
            phone=f"+3361{n:07d}",
            locale="en",
            time_zone="Europe/Paris",
            attributes={"n": n},
        )
        for n in range(profiles)
    )
    return Token.objects.create(user=user).key


def create_presets_and_segment(api: Api, webhook_url: str) -> tuple[dict[str, int], int]:
    presets = {}
    for channel, fields in {
        "email": {"from_name": "Soak", "from_email": "soak@example.com"},
        "sms": {"sms_sender_id": "SOAK"},
        "webhook": {"webhook_url": webhook_url},
    }.items():
        status, body = api.call(
            "POST", "/api/presets/", {"name": f"Soak {channel}", "channel": channel, **fields}
        )
        if status != 201:
            raise SystemExit(f"soak: cannot create the {channel} preset: {status} {body}")
        presets[channel] = body["id"]
    status, body = api.call(
        "POST", "/api/segments/", {"name": "Everyone", "kind": "rules", "rules": {"all": []}}
    )
    if status != 201:
        raise SystemExit(f"soak: cannot create the segment: {status} {body}")
    return presets, body["id"]


def campaign_payload(n: int, presets: dict[str, int], segment: int) -> dict[str, Any]:
    start_at = None
    if n % 2:  # for the scheduler: Scheduled first, then Live at its time
        start_at = (dt.datetime.now(dt.UTC) + SCHEDULED_AHEAD).isoformat()
    return {
        "name": f"Soak {n}",
        "type": "transactional",
        "segment": segment,
        "schedule": {"start_at": start_at},
        "actions": [
            {
                "channel": "email",
                "preset": presets["email"],
                "subject": "Hi",
                "body": "Hi {{ profile.external_id }}",
            },
            {"channel": "sms", "preset": presets["sms"], "body": "Hello {{ profile.external_id }}"},
            {"channel": "webhook", "preset": presets["webhook"], "body": "{{ profile.email }}"},
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="activating for this long")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between campaigns")
    parser.add_argument("--profiles", type=int, default=100, help="audience of each campaign")
    parser.add_argument("--settle", type=float, default=300.0, help="then wait this long at most")
    parser.add_argument("--var-dir", type=Path, default=BASE_DIR / "var" / "soak")
    options = parser.parse_args()

    var_dir: Path = options.var_dir.resolve()
    shutil.rmtree(var_dir, ignore_errors=True)
    var_dir.mkdir(parents=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        key: value
        for key, value in os.environ.items()
        # The embedded default, whatever this shell points at.
        if key not in ("DATABASE_URL", "CELERY_BROKER_URL")
    }
    env |= {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SALVO_VAR_DIR": str(var_dir),
        "SALVO_HOST": "127.0.0.1",
        "SALVO_PORT": str(port),
        "SALVO_SCHEDULER_INTERVAL_S": "0.2",
        "PYTHONUNBUFFERED": "1",
        # As `make run` serves: DEBUG off, the static files collected for whitenoise.
        "DJANGO_DEBUG": "false",
    }

    from config.processes import stop_process
    from devtools.sinks import running_sinks

    with running_sinks(record=var_dir / "sink.jsonl", content=False) as sink:
        env |= sink.provider_env()
        os.environ.clear()
        os.environ.update(env)
        for command in (["migrate", "--noinput"], ["collectstatic", "--noinput"]):
            subprocess.run(
                [str(VENV_BIN / "python"), "manage.py", *command, "-v0"],
                cwd=BASE_DIR,
                env=env,
                check=True,
            )
        token = setup_data(options.profiles)
        log_path = var_dir / "stack.log"
        with log_path.open("wb") as log:
            stack = subprocess.Popen(
                [str(VENV_BIN / "supervisord"), "-c", str(SUPERVISORD_CONF)],
                cwd=BASE_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                figures = drive(options, api=Api(base, token), base=base, sink=sink, var=var_dir)
            finally:
                # SIGTERM to supervisord, which stops its programs; SIGKILL to all of them
                # if it has not within the timeout (the status is then -SIGKILL).
                stack_status = stop_process(stack, grace_s=STOP_TIMEOUT_S, kill_group=True)
    return report(figures, stack_status=stack_status, var_dir=var_dir, log_path=log_path)


def drive(options: argparse.Namespace, *, api: Api, base: str, sink: Any, var: Path) -> dict:
    supervisor_log = var / "supervisord.log"
    wait_until(lambda: web_answers(base), READY_TIMEOUT_S, "the web server")
    for program in PROGRAMS:
        wait_until(
            lambda program=program: (
                supervisor_log.exists()
                and f"success: {program} entered RUNNING" in supervisor_log.read_text()
            ),
            READY_TIMEOUT_S,
            f"{program} running",
        )
    presets, segment = create_presets_and_segment(api, sink.webhook_url)

    started = time.monotonic()
    campaigns: list[int] = []
    refused: list[str] = []
    n = 0
    while time.monotonic() - started < options.seconds:
        n += 1
        status, body = api.call("POST", "/api/campaigns/", campaign_payload(n, presets, segment))
        if status != 201:
            refused.append(f"create {n}: {status} {body}")
        else:
            # As a client does: read the review, acknowledge its warnings (the soak's
            # content is known: no unsubscribe link without SALVO_PUBLIC_URL, say).
            _, review = api.call("GET", f"/api/campaigns/{body['id']}/review/")
            checks = review.get("checks", []) if isinstance(review, dict) else []
            warnings = [c["code"] for c in checks if c["level"] == "warning"]
            activated, answer = api.call(
                "POST", f"/api/campaigns/{body['id']}/activate/", {"acknowledge": warnings}
            )
            if activated == 202:
                campaigns.append(body["id"])
            else:
                refused.append(f"activate {body['id']}: {activated} {answer}")
        time.sleep(max(0.0, started + n * options.every - time.monotonic()))
    activating_s = time.monotonic() - started

    def statuses() -> Counter[str]:
        answers = (api.call("GET", f"/api/campaigns/{pk}/") for pk in campaigns)
        return Counter(body["status"] if code == 200 else f"HTTP {code}" for code, body in answers)

    deadline = time.monotonic() + options.settle
    while (seen := statuses())["completed"] < len(campaigns) and time.monotonic() < deadline:
        time.sleep(2)
    return {
        "campaigns": campaigns,
        "refused": refused,
        "statuses": seen,
        "activating_s": activating_s,
        "settle_s": time.monotonic() - started - activating_s,
        "sink_records": sink.attempts(),
    }


def report(figures: dict, *, stack_status: int, var_dir: Path, log_path: Path) -> int:
    from campaigns.choices import DeliveryStatus
    from campaigns.models import Delivery
    from devtools.sinks import count_duplicates

    broken: list[str] = []
    campaigns = figures["campaigns"]
    broken += [f"refused: {line}" for line in figures["refused"]]
    if figures["statuses"]["completed"] != len(campaigns):
        broken.append(f"campaigns not Completed: {dict(figures['statuses'])}")

    supervisor_log = (var_dir / "supervisord.log").read_text()
    spawned = Counter(re.findall(r"spawned: '(\w+)'", supervisor_log))
    restarts = sum(spawned.values()) - len(PROGRAMS)
    if restarts or spawned.keys() != set(PROGRAMS):
        broken.append(f"programs started {dict(spawned)} times (once each expected)")
    broken += [f"supervisord: {line}" for line in re.findall(r".*not expected.*", supervisor_log)]
    stopped = dict(re.findall(r"stopped: (\w+) \((.*?)\)", supervisor_log))
    if stack_status != 0 or any(how != "exit status 0" for how in stopped.values()):
        broken.append(f"unclean stop: supervisord {stack_status}, programs {stopped}")
    output = log_path.read_text(errors="replace").splitlines()
    errors = [line for line in output if FORBIDDEN.search(line)]
    broken += [f"output: {line}" for line in errors[:20]]
    quarantined = sorted(p.name for p in (var_dir / "broker" / "quarantine").iterdir())
    broken += [f"broker message quarantined: {name}" for name in quarantined]

    rows = Delivery.objects.filter(execution__campaign__in=campaigns)
    by_status = Counter(rows.values_list("status", flat=True))
    sent_ids = Counter(
        (channel, str(pk))
        for channel, pk in rows.filter(status=DeliveryStatus.SENT).values_list(
            "action__channel", "pk"
        )
    )
    records = figures["sink_records"]
    received = Counter(
        (r["channel"], r["delivery_id"]) for r in records if r["accepted"] and not r.get("repeat")
    )
    duplicates = count_duplicates(records)
    if set(by_status) != {DeliveryStatus.SENT}:
        broken.append(f"deliveries not all sent: {dict(by_status)}")
    if received != sent_ids:
        missing = len(set(sent_ids) - set(received))
        unknown = len(set(received) - set(sent_ids))
        broken.append(f"sinks and rows differ: {missing} sent rows unseen, {unknown} unknown")
    if duplicates:
        broken.append(f"{duplicates} messages received twice")

    result = {
        "activating_s": round(figures["activating_s"], 1),
        "settle_s": round(figures["settle_s"], 1),
        "campaigns_activated": len(campaigns),
        "campaigns_completed": figures["statuses"]["completed"],
        "deliveries": sum(by_status.values()),
        "deliveries_sent": by_status[DeliveryStatus.SENT],
        "sink_messages": sum(received.values()),
        "duplicates": duplicates,
        "restarts": restarts,
        "error_lines": len(errors),
        "quarantined": len(quarantined),
        "stack_exit_status": stack_status,
    }
    for key, value in result.items():
        print(f"{key}: {value}")
    for line in broken:
        print(f"BROKEN {line}")
    print(json.dumps(result | {"ok": not broken}))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
