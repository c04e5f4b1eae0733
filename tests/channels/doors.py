"""How the channel tests reach the preset admin's pages: the form data as the page posts
it. Shared by every module that goes through that door."""

from __future__ import annotations

from typing import Any


def preset_data(**fields: Any) -> dict[str, Any]:
    return {
        "name": "Newsletter",
        "channel": "email",
        "description": "",
        "from_name": "",
        "from_email": "",
        "reply_to": "",
        "sms_sender_id": "",
        "push_app_id": "",
        "webhook_url": "",
        "backend": "",
        "rate_limit_per_second": "",
        "_save": "Save",
        **fields,
    }
