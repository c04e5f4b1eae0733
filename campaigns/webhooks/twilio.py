"""Twilio's message status callbacks: each verified with Twilio's own validator and turned
into a delivery event (``campaigns.events``).

Twilio posts to the ``StatusCallback`` URL each message named
(``channels.providers.twilio.status_callback_url``: Salvo's public URL, the delivery id in
the query) every time the message's status changes, signed in ``X-Twilio-Signature`` with
the account's auth token over the full URL and the posted parameters. A request whose
signature does not verify is refused with 403 and records nothing.

Statuses on the way (queued, accepted, sending, sent…) are answered and not recorded; the
final ones become events: ``delivered``; ``undelivered`` (the carrier could not deliver it)
a soft bounce; ``failed`` (Twilio could not send it) a rejection; and either, with an error
code that says the number cannot be reached or opted out (``SUPPRESSION_BY_ERROR_CODE``),
a hard bounce or an unsubscribe that suppresses the number. An event is
``(MessageSid, MessageStatus)``: Twilio's retries of a callback record it once, and a
callback that arrives out of order records what it says all the same.

A recipient's own text to the sending number comes to the number's messaging webhook
(``twilio_inbound``, verified the same way): an opt-out keyword (STOP…) suppresses the
number and withdraws the SMS consent of its profiles, an opt-in keyword (START…) gives
them back (``campaigns.events.sms_keyword_record``).
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from twilio.request_validator import RequestValidator

from channels.choices import ChannelKind, SuppressionReason
from channels.providers.twilio import CALLBACK_DELIVERY_PARAM, SUPPRESSION_BY_ERROR_CODE

from ..choices import EventKind
from ..events import ProviderEvent, events_record, sms_keyword_record

PROVIDER = "twilio"
SIGNATURE_HEADER = "X-Twilio-Signature"

# Twilio's keywords, matched as Twilio matches them: the whole message, one word, in any
# case ("STOP PLEASE" is no keyword). Its default opt-out keywords, and those of Advanced
# Opt-Out on a Messaging Service (https://www.twilio.com/docs/messaging/tutorials/
# advanced-opt-out: "STOP, UNSUBSCRIBE, END, QUIT, STOPALL, REVOKE, OPTOUT, and CANCEL"),
# after which Twilio refuses to send to the number (error 21610) until it opts in again.
OPT_OUT_KEYWORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
# Twilio's opt-in keywords: "Recipients can disable this message stop, and resume receiving
# messages with the START, YES, or UNSTOP commands" (Twilio support for opt-out keywords,
# SMS STOP filtering: https://help.twilio.com/articles/223134027); Twilio lifts its own
# block of the number and, as for a STOP, passes the message on to the webhook, "so you can
# update your application logic".
OPT_IN_KEYWORDS = frozenset({"START", "YES", "UNSTOP"})
# With Advanced Opt-Out, Twilio names the sense of a keyword of the service's own list
# (a custom or translated one: "ARRET") in the webhook's OptOutType parameter.
OPT_OUT_TYPES = {"STOP": True, "START": False}
# The answer to an inbound message: empty TwiML, so Twilio sends nothing of Salvo's (its own
# confirmation of a STOP or a START goes out all the same).
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'

# The event of each final status (one without an error code that names the number).
KIND_BY_STATUS: dict[str, str] = {
    "delivered": EventKind.DELIVERED,
    "undelivered": EventKind.SOFT_BOUNCED,
    "failed": EventKind.REJECTED,
}
# The event of a failure whose error code suppresses the number.
KIND_BY_SUPPRESSION: dict[str, str] = {
    SuppressionReason.INVALID_ADDRESS: EventKind.BOUNCED,
    SuppressionReason.UNSUBSCRIBED: EventKind.UNSUBSCRIBED,
}


def status_event(params: dict[str, str], *, delivery: str) -> ProviderEvent | None:
    """The event a status callback's parameters report (None: a status on the way)."""
    status = params.get("MessageStatus", "").lower()
    kind = KIND_BY_STATUS.get(status)
    sid = params.get("MessageSid", "")
    if kind is None or not sid:
        return None
    code_text = params.get("ErrorCode", "")
    code = int(code_text) if code_text.isdigit() else None
    suppress = SUPPRESSION_BY_ERROR_CODE.get(code or 0, "") if kind != EventKind.DELIVERED else ""
    return ProviderEvent(
        provider=PROVIDER,
        event_id=f"{sid}:{status}",
        kind=KIND_BY_SUPPRESSION.get(suppress, kind),
        channel=ChannelKind.SMS,
        occurred_at=timezone.now(),
        delivery_id=int(delivery) if delivery.isdigit() else None,
        provider_message_id=sid,
        recipient=params.get("To", ""),
        detail=f"{status} (error {code})" if code else status,
        suppress=suppress,
    )


def signed_by_twilio(request: HttpRequest) -> bool:
    """Whether ``X-Twilio-Signature`` signs the URL Twilio called and the posted fields
    with the account's auth token. The URL is the public one Salvo gave Twilio (a proxy in
    front may have changed the host and scheme this process sees)."""
    token = settings.SALVO_TWILIO["auth_token"]
    signature = request.headers.get(SIGNATURE_HEADER, "")
    if not (token and signature):
        return False
    url = (
        f"{settings.SALVO_PUBLIC_URL}{request.get_full_path()}"
        if settings.SALVO_PUBLIC_URL
        else request.build_absolute_uri()
    )
    return bool(RequestValidator(token).validate(url, request.POST, signature))


@csrf_exempt
@require_POST
def twilio_status(request: HttpRequest) -> HttpResponse:
    """Record the event a signed status callback reports; 204 once it is recorded (or was
    before), 403 when the signature does not verify."""
    if not signed_by_twilio(request):
        return JsonResponse({"detail": "The Twilio signature does not verify."}, status=403)
    event = status_event(request.POST.dict(), delivery=request.GET.get(CALLBACK_DELIVERY_PARAM, ""))
    if event is not None:
        events_record(events=[event])
    return HttpResponse(status=204)


def keyword_sense(params: dict[str, str]) -> bool | None:
    """Whether an inbound message is an opt-out (True) or an opt-in (False) keyword; None
    for any other text (HELP, INFO, a reply), which changes nothing."""
    typed = OPT_OUT_TYPES.get(params.get("OptOutType", "").strip().upper())
    if typed is not None:
        return typed
    word = params.get("Body", "").strip().upper()
    if word in OPT_OUT_KEYWORDS:
        return True
    if word in OPT_IN_KEYWORDS:
        return False
    return None


@csrf_exempt
@require_POST
def twilio_inbound(request: HttpRequest) -> HttpResponse:
    """A recipient's text to the sending number (the number's "A message comes in"
    webhook): an opt-out or opt-in keyword sets the number's suppression and its profiles'
    SMS consent, once per ``MessageSid``. Answered with empty TwiML; 403 when the signature
    does not verify (nothing changes)."""
    if not signed_by_twilio(request):
        return JsonResponse({"detail": "The Twilio signature does not verify."}, status=403)
    params = request.POST.dict()
    opt_out = keyword_sense(params)
    sid = params.get("MessageSid", "") or params.get("SmsSid", "")
    phone = params.get("From", "")
    if opt_out is not None and sid and phone.strip():
        sms_keyword_record(
            provider=PROVIDER,
            message_id=sid,
            phone=phone,
            keyword=params.get("Body", "").strip().upper() or params.get("OptOutType", ""),
            opt_out=opt_out,
        )
    return HttpResponse(EMPTY_TWIML, content_type="text/xml")
