"""How domain errors become REST API responses, the same for every endpoint.

Every error under `/api/` is JSON with a `detail` (and field errors for a 400):

* `exception_handler` (DRF's EXCEPTION_HANDLER) maps what the views raise: refused
  transitions (409), Django's `ValidationError` (400), and the request limits Django
  enforces while DRF reads a body (`DATA_UPLOAD_MAX_MEMORY_SIZE` → 413,
  `DATA_UPLOAD_MAX_NUMBER_FIELDS`/`…_FILES` → 400), which Django would answer with an
  HTML page;
* `JSONParser` refuses a body nested deeper than `SALVO_JSON_MAX_DEPTH` before parsing
  it (Python's parser runs out of recursion near a thousand levels: a 500), and
  `JSONField` does the same for JSON text sent in a form field;
* `JsonErrorsUnderApi`, a middleware, answers in JSON what Django answers itself under
  `/api/` (an unknown URL's 404, the 500 page).
"""

import io
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import (
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django_fsm import ConcurrentTransition, TransitionNotAllowed
from rest_framework import exceptions, parsers, serializers, status
from rest_framework.response import Response

from campaigns.exceptions import CampaignConflict
from segments.validators import JsonTooDeep, check_json_nesting, json_max_depth

API_PATH_PREFIX = "/api/"


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The current state does not allow this operation."
    default_code = "conflict"


def _validation_detail(error: DjangoValidationError) -> Any:
    if hasattr(error, "error_dict"):
        return {field: [str(m) for m in msgs] for field, msgs in error.message_dict.items()}
    return {"detail": " ".join(error.messages), "errors": error.messages}


def _request_limit_detail(exc: Exception) -> tuple[int, str] | None:
    """The status and detail for a request over one of Django's upload limits."""
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return (
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            f"The request body is larger than the limit of {limit:,} bytes "
            "(DATA_UPLOAD_MAX_MEMORY_SIZE).",
        )
    if isinstance(exc, TooManyFieldsSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return (
            status.HTTP_400_BAD_REQUEST,
            f"The request has more than {limit:,} form fields (DATA_UPLOAD_MAX_NUMBER_FIELDS).",
        )
    if isinstance(exc, TooManyFilesSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FILES
        return (
            status.HTTP_400_BAD_REQUEST,
            f"The request has more than {limit:,} files (DATA_UPLOAD_MAX_NUMBER_FILES).",
        )
    return None


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Translate domain errors: refused transition → 409, invalid input → 400, a request
    over an upload limit → 413 or 400; never a 500, never an HTML page."""
    if isinstance(exc, (TransitionNotAllowed, ConcurrentTransition, CampaignConflict)):
        exc = Conflict(detail=str(exc))
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(detail=str(exc) or None)
    elif isinstance(exc, DjangoValidationError):
        return Response(_validation_detail(exc), status=status.HTTP_400_BAD_REQUEST)
    else:
        over_limit = _request_limit_detail(exc)
        if over_limit is not None:
            return Response({"detail": over_limit[1]}, status=over_limit[0])
    # Imported here: rest_framework.views reads DEFAULT_PARSER_CLASSES, this module's
    # JSONParser, when it is first imported.
    from rest_framework.views import exception_handler as drf_exception_handler

    return drf_exception_handler(exc, context)


# --- JSON with a bounded nesting -------------------------------------------------------


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, refusing a body nested deeper than `SALVO_JSON_MAX_DEPTH` with
    a 400 before it is parsed."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        body = stream.read()
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = body.decode(encoding, errors="replace")
        except LookupError:
            text = ""  # not a text encoding: DRF's parser refuses the charset below
        try:
            check_json_nesting(text)
        except JsonTooDeep as error:
            raise exceptions.ParseError(f"JSON parse error - {error}") from error
        return super().parse(io.BytesIO(body), media_type, parser_context)


class JSONField(serializers.JSONField):
    """DRF's JSONField, refusing JSON text (a form field's value) nested deeper than
    `SALVO_JSON_MAX_DEPTH` before it is parsed; parsed JSON bodies passed `JSONParser`."""

    default_error_messages = {"too_deep": "Enter valid JSON nested at most {limit} levels deep."}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, bytes | str) and (self.binary or hasattr(data, "is_json_string")):
            text = data if isinstance(data, str) else data.decode(errors="replace")
            try:
                check_json_nesting(text)
            except JsonTooDeep:
                self.fail("too_deep", limit=json_max_depth())
        return super().to_internal_value(data)


# --- errors Django answers itself ------------------------------------------------------

# DRF's words for the statuses Django answers under /api/ without DRF.
_DETAILS = {
    status.HTTP_404_NOT_FOUND: str(exceptions.NotFound.default_detail),
    status.HTTP_500_INTERNAL_SERVER_ERROR: str(exceptions.APIException.default_detail),
}


class JsonErrorsUnderApi:
    """Middleware: an error response under `/api/` that DRF did not render (Django's own
    404 for an unknown URL, its 500 page…) becomes JSON `{"detail": …}` with the same
    status. DRF's responses are left as they are (content negotiation chose their form)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if (
            response.status_code >= 400
            and request.path_info.startswith(API_PATH_PREFIX)
            and not isinstance(response, Response)
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            detail = _DETAILS.get(response.status_code, response.reason_phrase)
            return JsonResponse({"detail": detail}, status=response.status_code)
        return response
