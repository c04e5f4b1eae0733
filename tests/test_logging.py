"""The request id on every response and log line (config/logging.py), and the choice of
log format. The JSON lines of a running web process: tests/test_web_server.py."""

from __future__ import annotations

import re

import pytest

from tests.settings_loader import refusal


@pytest.mark.parametrize("given", ["lb-7f3a.2026:42_x", "x" * 128])
def test_a_sane_request_id_is_kept_and_sent_back(client, given):
    response = client.get("/no-such-page/", HTTP_X_REQUEST_ID=given)

    assert response["X-Request-ID"] == given


@pytest.mark.parametrize(
    "given",
    [
        "",
        "two words",
        "forged\nERROR line",
        "x" * 129,
        "<script>",
    ],
)
def test_a_missing_or_insane_request_id_is_replaced_by_a_new_one(client, given):
    headers = {"HTTP_X_REQUEST_ID": given} if given else {}
    first = client.get("/no-such-page/", **headers)["X-Request-ID"]
    second = client.get("/no-such-page/", **headers)["X-Request-ID"]

    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


def test_an_unknown_log_format_refuses_to_start_naming_the_choices(tmp_path):
    why = refusal({"SALVO_LOG_FORMAT": "xml"}, tmp_path)

    assert "SALVO_LOG_FORMAT is 'xml': choose text or json." in why
