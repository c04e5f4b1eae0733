"""The load balancers' probes (config/health.py), in the test process on whichever profile
the environment selects."""

from __future__ import annotations

import pytest
from django.db.migrations.recorder import MigrationRecorder
from django.test import override_settings

import config.health
from tests.conftest import free_port

# The production profile's HTTPS redirect and a host list that does not name the address a
# load balancer probes: neither may turn a probe away.
AS_BEHIND_A_LOAD_BALANCER = override_settings(
    SECURE_SSL_REDIRECT=True, ALLOWED_HOSTS=["salvo.example.com"]
)


@AS_BEHIND_A_LOAD_BALANCER
def test_healthz_answers_any_host_over_plain_http_without_the_database(client):
    # No django_db mark: any database access would raise here.
    response = client.get("/healthz", HTTP_HOST="10.0.3.7:8000")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Cache-Control"] == "no-store"


@AS_BEHIND_A_LOAD_BALANCER
@pytest.mark.django_db
def test_readyz_is_ready_when_database_broker_and_migrations_are(client):
    response = client.get("/readyz", HTTP_HOST="10.0.3.7:8000")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "failed": [],
        "checks": {"database": "ok", "broker": "ok", "migrations": "ok"},
    }


@pytest.mark.django_db
def test_readyz_is_unavailable_naming_the_broker_when_it_cannot_be_reached(client):
    broker = f"redis://127.0.0.1:{free_port()}/0"
    with override_settings(
        CELERY_BROKER_URL=broker,
        BROKER_IS_FILESYSTEM=False,
        CELERY_BROKER_TRANSPORT_OPTIONS={},
        SALVO_READYZ_BROKER_TIMEOUT_S=1.0,
    ):
        response = client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["failed"] == ["broker"]
    assert body["checks"] == {"database": "ok", "broker": "unreachable", "migrations": "ok"}
    assert broker not in response.content.decode()  # the why is logged, not published


@pytest.mark.django_db
def test_a_probe_of_another_method_goes_on_to_the_site(client):
    assert client.post("/healthz").status_code == 404


@pytest.mark.django_db
def test_readyz_is_unavailable_naming_the_migrations_while_one_is_unapplied(client, monkeypatch):
    # As a process finds the database before `migrate` ran this release's migration (the
    # row goes back when the test's transaction is rolled back).
    MigrationRecorder.Migration.objects.filter(app="campaigns").latest("id").delete()
    monkeypatch.setattr(config.health, "_migrations_applied", False)

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["failed"] == ["migrations"]
    assert response.json()["checks"]["migrations"] == "1 unapplied"
