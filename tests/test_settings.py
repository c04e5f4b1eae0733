"""The two run profiles, as a process started with a given environment sees them.

Each case loads the settings in a fresh interpreter whose environment holds only what the
case sets (not the test run's own), as a web or worker process would start."""

from __future__ import annotations

import pytest

from tests.settings_loader import (
    PRODUCTION_REQUIRED,
    PRODUCTION_URLS,
    load_settings,
    refusal,
    run_python,
)

SECRETS = ("DJANGO_SECRET_KEY", "SALVO_WEBHOOK_SECRET", "SALVO_UNSUBSCRIBE_SECRET")


@pytest.fixture
def public_defaults(tmp_path) -> dict[str, str]:
    """The secrets the embedded default runs with: readable by anyone in this repository."""
    embedded = load_settings({}, tmp_path)
    return {
        "DJANGO_SECRET_KEY": embedded["SECRET_KEY"],
        "SALVO_WEBHOOK_SECRET": embedded["SALVO_WEBHOOK_SECRET"],
        "SALVO_UNSUBSCRIBE_SECRET": embedded["SALVO_UNSUBSCRIBE_SECRET"],
    }


def test_the_embedded_default_starts_with_nothing_set(tmp_path):
    embedded = load_settings({}, tmp_path)

    assert embedded["SALVO_EMBEDDED"] is True
    assert embedded["DEBUG"] is True
    assert embedded["SECURE_SSL_REDIRECT"] is False
    assert embedded["SESSION_COOKIE_SECURE"] is False


def test_the_embedded_default_mails_no_link_signed_with_its_public_key(tmp_path):
    public_url = {"SALVO_PUBLIC_URL": "https://salvo.example.com"}

    assert "SALVO_UNSUBSCRIBE_SECRET" in refusal(public_url, tmp_path)
    own_key = {
        **public_url,
        "SALVO_UNSUBSCRIBE_SECRET": PRODUCTION_REQUIRED["SALVO_UNSUBSCRIBE_SECRET"],
    }
    assert load_settings(own_key, tmp_path)["SALVO_EMBEDDED"] is True


@pytest.mark.parametrize("url", ["DATABASE_URL", "CELERY_BROKER_URL"])
def test_either_server_url_selects_the_production_profile(tmp_path, url):
    production = load_settings({url: PRODUCTION_URLS[url], **PRODUCTION_REQUIRED}, tmp_path)

    assert production["SALVO_EMBEDDED"] is False


@pytest.mark.parametrize("missing", sorted(PRODUCTION_REQUIRED))
def test_production_refuses_to_start_without_each_required_variable(tmp_path, missing):
    env = {**PRODUCTION_URLS, **PRODUCTION_REQUIRED}
    del env[missing]

    assert missing in refusal(env, tmp_path)


def test_production_with_only_the_server_urls_refuses_to_start(tmp_path):
    # The report of issue 9: this used to start with DEBUG on and the public keys.
    assert "DJANGO_SECRET_KEY" in refusal(PRODUCTION_URLS, tmp_path)


@pytest.mark.parametrize("secret", SECRETS)
def test_production_refuses_the_embedded_defaults_public_secrets(tmp_path, public_defaults, secret):
    env = {**PRODUCTION_URLS, **PRODUCTION_REQUIRED, secret: public_defaults[secret]}

    assert secret in refusal(env, tmp_path)


def test_production_refuses_the_public_key_as_an_unsubscribe_fallback(tmp_path, public_defaults):
    # Links signed before unsubscribe links had a key of their own used the secret key; a
    # deployment that ran on the public one must not keep honouring what anyone can sign.
    env = {
        **PRODUCTION_URLS,
        **PRODUCTION_REQUIRED,
        "SALVO_UNSUBSCRIBE_SECRET_FALLBACKS": public_defaults["DJANGO_SECRET_KEY"],
    }

    assert "SALVO_UNSUBSCRIBE_SECRET_FALLBACKS" in refusal(env, tmp_path)


def test_production_runs_with_debug_off_and_https_enforced_unless_told(tmp_path):
    production = load_settings({**PRODUCTION_URLS, **PRODUCTION_REQUIRED}, tmp_path)

    assert production["DEBUG"] is False
    assert production["SECRET_KEY"] == PRODUCTION_REQUIRED["DJANGO_SECRET_KEY"]
    assert production["SALVO_WEBHOOK_SECRET"] == PRODUCTION_REQUIRED["SALVO_WEBHOOK_SECRET"]
    assert production["ALLOWED_HOSTS"] == ["salvo.example.com"]
    assert production["SECURE_SSL_REDIRECT"] is True
    assert production["SESSION_COOKIE_SECURE"] is True
    assert production["CSRF_COOKIE_SECURE"] is True
    assert production["SECURE_PROXY_SSL_HEADER"] is None

    asked = load_settings(
        {**PRODUCTION_URLS, **PRODUCTION_REQUIRED, "DJANGO_DEBUG": "true"}, tmp_path
    )
    assert asked["DEBUG"] is True


def test_production_options_for_a_tls_proxy_and_a_plain_http_test_run(tmp_path):
    production = load_settings(
        {
            **PRODUCTION_URLS,
            **PRODUCTION_REQUIRED,
            "DJANGO_SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
            "DJANGO_SECURE_SSL_REDIRECT": "false",
            "DJANGO_SECURE_COOKIES": "false",
        },
        tmp_path,
    )

    assert production["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert production["SECURE_SSL_REDIRECT"] is False
    assert (production["SESSION_COOKIE_SECURE"], production["CSRF_COOKIE_SECURE"]) == (False, False)


def test_check_deploy_is_clean_with_the_required_variables(tmp_path):
    done = run_python(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        {**PRODUCTION_URLS, **PRODUCTION_REQUIRED},
        tmp_path,
    )

    assert done.returncode == 0, done.stderr
    assert "no issues" in done.stdout


@pytest.mark.parametrize(
    ("soft", "hard"),
    [
        ("SALVO_DELIVERY_TASK_SOFT_LIMIT_S", "SALVO_DELIVERY_TASK_HARD_LIMIT_S"),
        ("SALVO_CONTROL_TASK_SOFT_LIMIT_S", "SALVO_CONTROL_TASK_HARD_LIMIT_S"),
    ],
)
def test_a_soft_time_limit_at_or_above_its_hard_limit_refuses_to_start(tmp_path, soft, hard):
    line = refusal({soft: "60", hard: "60"}, tmp_path)

    assert line.endswith(f"{soft} must be above 0 and below {hard}.")
    assert load_settings({soft: "30", hard: "60"}, tmp_path)["SALVO_EMBEDDED"] is True  # starts
