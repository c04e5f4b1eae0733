"""Personalisation in the template sandbox."""

import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest
from django.conf import settings
from django.template import defaultfilters, defaulttags
from django.test import override_settings

from campaigns.choices import DeliveryStatus
from campaigns.models import Delivery
from channels.rendering import (
    RenderBudgetExceeded,
    RenderError,
    TemplateContentError,
    content_renderer,
    profile_context,
    render_content,
    render_html,
    validate_content,
)
from channels.rendering.budget import Budget, render_limits
from devtools.sinks import running_sinks
from segments.models import Profile
from tests.campaigns.delivery_support import plan, send_all
from tests.campaigns.factories import make_live_campaign, sms_action
from tests.segments.factories import ProfileFactory


def ann(**attributes) -> Mapping[str, Any]:
    profile = Profile(
        external_id="ann-1",
        email="ann@example.com",
        phone="+33612345678",
        locale="fr",
        time_zone="Europe/Paris",
        attributes={"first_name": "Ann", "plan": "gold", "tags": ["a", "b"], **attributes},
    )
    return profile_context(profile)


def body_of(body: str, profile: Mapping[str, Any] | None = None) -> str:
    return render_content(subject="", body=body, profile=profile or ann())[1]


def test_profile_fields_and_attributes_render():
    subject, body = render_content(
        subject="Hi {{ profile.first_name }}",
        body="{{ profile.email }} {{ profile.phone }} {{ profile.locale }} "
        "{{ profile.time_zone }} {{ profile.external_id }} {{ profile.attributes.plan }}",
        profile=ann(),
    )
    assert subject == "Hi Ann"
    assert body == "ann@example.com +33612345678 fr Europe/Paris ann-1 gold"


def test_missing_values_fall_back_with_default():
    nameless = profile_context(Profile(external_id="x", attributes={}))
    assert body_of('Hello {{ profile.first_name|default:"there" }}!', nameless) == "Hello there!"
    assert body_of("Hello {{ profile.first_name }}!", nameless) == "Hello !"


def test_tags_and_filters_of_the_template_language_work():
    body = body_of(
        "{% if profile.plan == 'gold' %}VIP{% endif %} "
        "{% for tag in profile.tags %}{{ tag|upper }}{% endfor %} "
        "{% with name=profile.first_name %}{{ name|lower }}{% endwith %}"
    )
    assert body == "VIP AB ann"


def test_attributes_never_hide_the_profiles_own_fields():
    profile = ann(email="spoofed@example.com")
    assert body_of("{{ profile.email }}", profile) == "ann@example.com"
    assert body_of("{{ profile.attributes.email }}", profile) == "spoofed@example.com"


def test_a_values_row_renders_like_a_profile():
    row = {"external_id": "bob", "email": "bob@example.com", "attributes": {"first_name": "Bob"}}
    assert body_of("{{ profile.first_name }} {{ profile.email }}", profile_context(row)) == (
        "Bob bob@example.com"
    )


def test_text_is_not_escaped_but_html_is():
    profile = ann(first_name="Tom & <Jerry>")
    assert body_of("{{ profile.first_name }}", profile) == "Tom & <Jerry>"
    html = render_html(html_body="<p>{{ profile.first_name }}</p>", profile=profile)
    assert html == "<p>Tom &amp; &lt;Jerry&gt;</p>"


def test_valid_content_passes_validation():
    validate_content(
        subject="Hi {{ profile.first_name|default:'there' }}",
        body="{% for t in profile.tags %}{{ forloop.counter }}{{ t }}{% endfor %}",
    )


def test_a_syntax_error_is_refused_naming_the_field():
    with pytest.raises(TemplateContentError) as excinfo:
        validate_content(subject="Hi {{ profile.first name }}", body="{% if %}x{% endif %}")
    errors = excinfo.value.message_dict
    assert set(errors) == {"subject", "body"}
    assert "syntax error" in errors["body"][0].lower()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("{% load static %}", "the {% load %} tag is not allowed"),
        ("{% include 'admin/base.html' %}", "the {% include %} tag is not allowed"),
        ("{% extends 'admin/base.html' %}", "the {% extends %} tag is not allowed"),
        ("{% debug %}", "the {% debug %} tag is not allowed"),
        ("{% url 'admin:index' %}", "the {% url %} tag is not allowed"),
        ("{{ profile.__class__ }}", "may not begin with underscores"),
        ("{{ profile.attributes.__class__.__mro__ }}", "may not begin with underscores"),
        ("{{ settings.SECRET_KEY }}", "unknown variable 'settings'"),
        ("{% if request.user %}x{% endif %}", "unknown variable 'request'"),
        ("{{ profile.first_name|default:settings.SECRET_KEY }}", "unknown variable 'settings'"),
        ("{{ profile.first_name|nope }}", "Invalid filter"),
        # A literal argument that would fail every recipient.
        ('{{ profile.quote|wordwrap:"0" }}', "|wordwrap must be at least 1"),
        ('{{ profile.score|divisibleby:"0" }}', "|divisibleby:0 divides by zero"),
        ('{{ profile.first_name|ljust:"wide" }}', "|ljust must be a whole number"),
        ('{{ profile.site|urlizetrunc:"short" }}', "|urlizetrunc must be a whole number"),
        ("{% widthratio profile.score 100 'wide' %}", "{% widthratio %} must be a whole number"),
        # Numbers in the template that fail every recipient.
        ("{% widthratio profile.score 100 1e400 %}", "the number 1e400 is too large"),
        ("{% lorem 1e400 w %}", "the number 1e400 is too large"),
        ("{{ profile.score|add:1e400 }}", "the number 1e400 is too large"),
        ("{{ profile.quote|truncatewords:-1e400 }}", "the number -1e400 is too large"),
        ("{% for t in 12 %}{{ t }}{% endfor %}", "cannot loop over the number 12"),
        ("{% regroup 1.5 by kind as groups %}", "cannot regroup the number 1.5"),
        # Django counts an argument given to these filters as their autoescape flag.
        ("{{ profile.quote|urlize:'x' }}", "|urlize takes no argument"),
        ("{{ profile.quote|linebreaks:1 }}", "|linebreaks takes no argument"),
    ],
)
def test_forbidden_constructs_are_refused_with_a_clear_message(body, expected):
    with pytest.raises(TemplateContentError) as excinfo:
        validate_content(subject="", body=body)
    assert expected in excinfo.value.message_dict["body"][0]


def test_forbidden_content_does_not_render_either():
    with pytest.raises(RenderError, match="unknown variable 'settings'"):
        render_content(subject="", body="{{ settings.SECRET_KEY }}", profile=ann())
    with pytest.raises(RenderError, match="load"):
        render_content(subject="", body="{% load static %}x", profile=ann())


def test_settings_cannot_be_reached_through_profile_data():
    # The context holds plain data only: no model instance whose relations lead elsewhere.
    body = body_of("[{{ profile.settings }}{{ profile.SECRET_KEY }}{{ profile.attributes.x }}]")
    assert body == "[]"
    assert settings.SECRET_KEY not in body_of("{{ profile }}")


def test_one_recipients_bad_data_is_a_render_error():
    content = {"subject": "", "body": "{% for v in profile.visits %}{{ v }}{% endfor %}."}
    assert render_content(**content, profile=ann(visits=[1, 2]))[1] == "12."
    with pytest.raises(RenderError, match="not iterable"):
        render_content(**content, profile=ann(visits=3))


def test_a_body_that_renders_to_nothing_is_a_render_error():
    with pytest.raises(RenderError, match="renders to nothing"):
        render_content(subject="", body="{{ profile.first_name }}", profile={})


@pytest.mark.parametrize(
    "body",
    [
        # Text and variables only: rendered node by node on one reused context.
        'Hi {{ profile.first_name|default:"there" }}, {{ profile.plan|upper }}.',
        # A tag: the full template render.
        '{% if 1 %}Hi {{ profile.first_name|default:"there" }}, '
        "{{ profile.plan|upper }}.{% endif %}",
    ],
)
def test_a_batch_renders_each_recipient_with_their_own_data_only(body):
    render = content_renderer(subject="{{ profile.external_id }}", body=body)
    nameless = profile_context(Profile(external_id="x", attributes={"plan": "basic"}))

    # The second recipient never sees the first one's values, whatever the path.
    assert render(ann()) == ("ann-1", "Hi Ann, GOLD.")
    assert render(nameless) == ("x", "Hi there, BASIC.")
    assert render(ann(first_name="Bo")) == ("ann-1", "Hi Bo, GOLD.")


def test_in_a_batch_a_recipients_failing_filter_fails_that_recipient_only():
    render = content_renderer(subject="", body="Even: {{ profile.n|divisibleby:profile.d }}")

    assert render(ann(n=4, d=2))[1] == "Even: True"
    with pytest.raises(RenderError, match="body: ZeroDivisionError"):
        render(ann(n=4, d=0))
    assert render(ann(n=3, d=2))[1] == "Even: False"


# --- the budget: a render time and an output size per message -----------------------------


def in_a_thread(call, *, within_s: float = 120):
    """Run ``call`` in a worker thread, as delivery renders, and return what it returned or
    raised; fail if it is still running after ``within_s`` (a generous bound: a render that
    respects its budget ends within milliseconds, a runaway one within hours)."""
    outcome: list = []

    def run():
        try:
            outcome.append(call())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=within_s)
    assert not thread.is_alive(), f"still rendering after {within_s} s"
    return outcome[0]


# Three nested loops with nothing to write: 2,000 tags make 8·10⁹ turns, hours of work.
NESTED_LOOPS = (
    "{% for a in profile.tags %}{% for b in profile.tags %}{% for c in profile.tags %}"
    "{% if a == 'x' %}{{ c }}{% endif %}{% endfor %}{% endfor %}{% endfor %}done"
)


def test_a_runaway_render_stops_at_the_time_limit_in_a_worker_thread(settings):
    settings.SALVO_RENDER_TIMEOUT_MS = 200
    render = content_renderer(subject="", body=NESTED_LOOPS)

    error = in_a_thread(lambda: render(ann(tags=list(range(2000)))))

    assert isinstance(error, RenderError)
    assert "SALVO_RENDER_TIMEOUT_MS (200 ms)" in str(error)
    # The limit is per message: the next recipient renders in full.
    assert render(ann(tags=[1, 2]))[1] == "done"


def test_time_a_render_spends_waiting_for_the_cpu_is_not_held_against_it(settings):
    """The clock is checked as a message renders; past the limit, only a thread that is
    really running is stopped (one kept off the CPU is given more, up to 10 × the limit)."""
    # A limit of 100 ms leaves the 10 × cap (1 s) well beyond the 0.42 s slept below, even
    # when a loaded machine wakes this thread late.
    settings.SALVO_RENDER_TIMEOUT_MS = 100
    budget = Budget(render_limits()).start()

    time.sleep(0.3)  # 3 × the limit on the wall clock, none of it rendering
    budget.check_result("")
    time.sleep(0.12)  # waiting again, past the grace
    budget.check_result("")

    def render_on():  # really rendering: stopped within the grace
        for turn in range(10**9):
            budget.check_result(str(turn))

    with pytest.raises(RenderBudgetExceeded, match=r"SALVO_RENDER_TIMEOUT_MS \(100 ms\)"):
        render_on()


def test_a_width_over_the_size_limit_is_refused_at_save_and_at_render(settings):
    settings.SALVO_RENDER_MAX_CHARS = 100_000
    with pytest.raises(TemplateContentError) as excinfo:
        validate_content(subject="", body='{{ profile.email|ljust:"50000000" }}')
    message = excinfo.value.message_dict["body"][0]
    assert "50,000,000" in message
    assert "SALVO_RENDER_MAX_CHARS (100,000 characters)" in message

    # A width taken from the profile's data is only known at render: that recipient fails.
    render = content_renderer(subject="", body="{{ profile.email|ljust:profile.width }}.")
    with pytest.raises(RenderError, match=r"SALVO_RENDER_MAX_CHARS \(100,000 characters\)"):
        render(ann(width=50_000_000))
    assert render(ann(width=20))[1] == "ann@example.com     ."


@pytest.mark.parametrize(
    "body",
    [
        '{{ profile.first_name|rjust:"200000" }}',
        '{{ profile.first_name|center:"200000" }}',
        '{{ profile.age|stringformat:"0200000d" }}',
        '{{ profile.age|stringformat:".200000f" }}',
        '{{ profile.age|floatformat:"200000" }}',
        "{% lorem 20000 p %}",
        "{% lorem 200000 w %}",
    ],
)
def test_a_literal_argument_over_the_size_limit_is_refused_at_save(settings, body):
    settings.SALVO_RENDER_MAX_CHARS = 100_000
    with pytest.raises(TemplateContentError) as excinfo:
        validate_content(subject="", body=body)
    assert "SALVO_RENDER_MAX_CHARS (100,000 characters)" in excinfo.value.message_dict["body"][0]


@pytest.mark.parametrize(
    ("body", "data"),
    [
        ("{% lorem profile.n p %}", {"n": 20000}),
        ("{{ profile.tags|join:profile.glue }}", {"tags": list(range(1000)), "glue": "-" * 1000}),
        ("{{ profile.n|stringformat:profile.spec }}", {"n": 1, "spec": "0200000d"}),
        # Each addslashes doubles the quotes: sixteen of them make 655,360 characters of 10.
        ("{{ profile.q" + "|addslashes" * 16 + " }}", {"q": "'" * 10}),
        ("{% for t in profile.tags %}{{ profile.s }}{% endfor %}", {"tags": list(range(3000))}),
    ],
)
def test_output_built_from_the_profiles_data_stops_at_the_size_limit(settings, body, data):
    settings.SALVO_RENDER_MAX_CHARS = 100_000
    validate_content(subject="", body=body)  # fine for most recipients
    render = content_renderer(subject="", body=body)

    error = in_a_thread(lambda: render(ann(s="x" * 50, **data)))

    assert isinstance(error, RenderError)
    assert "SALVO_RENDER_MAX_CHARS (100,000 characters)" in str(error)


def test_the_limits_are_read_from_the_settings(settings):
    body = "{% for t in profile.tags %}{{ t }},{% endfor %}"
    recipient = ann(tags=list(range(100)))  # 290 characters
    assert len(render_content(subject="", body=body, profile=recipient)[1]) == 290

    settings.SALVO_RENDER_MAX_CHARS = 200
    with pytest.raises(RenderError, match=r"SALVO_RENDER_MAX_CHARS \(200 characters\)"):
        render_content(subject="", body=body, profile=recipient)
    with pytest.raises(TemplateContentError, match=r"SALVO_RENDER_MAX_CHARS \(200 characters\)"):
        validate_content(subject="", body='{{ profile.first_name|ljust:"201" }}')
    validate_content(subject="", body='{{ profile.first_name|ljust:"200" }}')

    settings.SALVO_RENDER_MAX_CHARS = 100_000
    settings.SALVO_RENDER_TIMEOUT_MS = 1
    error = in_a_thread(
        lambda: render_content(subject="", body=NESTED_LOOPS, profile=ann(tags=list(range(300))))
    )
    assert isinstance(error, RenderError)
    assert "SALVO_RENDER_TIMEOUT_MS (1 ms)" in str(error)


def test_the_subject_and_the_body_share_one_message_budget(settings):
    settings.SALVO_RENDER_MAX_CHARS = 100
    render = content_renderer(subject="{{ profile.s }}", body="{{ profile.s }}")

    assert render(ann(s="x" * 50)) == ("x" * 50, "x" * 50)
    with pytest.raises(RenderError, match="SALVO_RENDER_MAX_CHARS"):
        render(ann(s="x" * 51))


def test_content_that_overruns_the_budget_for_every_recipient_is_refused_at_save(settings):
    settings.SALVO_RENDER_MAX_CHARS = 1_000
    loops = "{% for a in 'abcdefghij' %}{% for b in 'abcdefghij' %}{{ a }}{{ b }}{% endfor %}" * 6
    with pytest.raises(TemplateContentError, match=r"SALVO_RENDER_MAX_CHARS \(1,000 characters\)"):
        validate_content(subject="", body=loops + "{% endfor %}" * 6)


# --- the fast path (text and variables) and the full path agree ------------------------------


TEXT_AND_VARIABLES = [
    'Hi {{ profile.first_name|default:"there" }}, {{ profile.plan|upper }}.',
    "{{ profile.missing }}{{ profile.tags|join:', ' }} · {{ profile.first_name|ljust:'30' }}!",
    "{{ profile.s }}{{ profile.s }}{{ profile.s }}",
    "{{ profile.s|escapejs|escapejs|escapejs }}",
]


def outcome_of(call):
    try:
        return call()
    except RenderError as error:
        return f"RenderError: {error}"


@pytest.mark.parametrize("body", TEXT_AND_VARIABLES)
@pytest.mark.parametrize("size", [5, 40, 400])
def test_the_fast_and_the_full_path_render_alike_and_keep_the_same_limits(settings, body, size):
    recipient = ann(s="<" * size)
    subject = "{{ profile.first_name }}"
    unlimited = render_content(subject=subject, body=body, profile=recipient)
    settings.SALVO_RENDER_MAX_CHARS = 300
    fast = content_renderer(subject=subject, body=body)
    # The same content inside a tag takes the full path.
    full = content_renderer(
        subject="{% if True %}" + subject + "{% endif %}",
        body="{% if True %}" + body + "{% endif %}",
    )

    expected = outcome_of(lambda: fast(recipient))
    assert outcome_of(lambda: full(recipient)) == expected
    if len(unlimited[0]) + len(unlimited[1]) > 300:
        assert "SALVO_RENDER_MAX_CHARS (300 characters)" in expected
    else:
        assert expected == unlimited


# --- the profile is read-only ------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        "profile.clear",
        "profile.popitem",
        "profile.update",
        "profile.attributes.clear",
        "profile.attributes.popitem",
        "profile.attributes.update",
        "profile.tags.pop",
        "profile.tags.clear",
        "profile.tags.reverse",
        "profile.tags.sort",
        "profile.attributes.tags.pop",
    ],
)
@pytest.mark.parametrize("wrap", ["{}", "{% if True %}{}{% endif %}"])
def test_nothing_a_template_calls_changes_the_recipients_data(call, wrap):
    profile = ann(tags=["b", "a", "c"])
    before = repr(profile)
    body = wrap.replace(
        "{}", "[{{ " + call + " }}]{{ profile.first_name }} {{ profile.tags|join:',' }}"
    )

    assert body_of(body, profile) == "[]Ann b,a,c"
    assert repr(profile) == before


def test_a_plain_mapping_given_as_profile_is_not_changed_either():
    data = {"first_name": "Ann", "tags": ["b", "a"], "attributes": {"x": [1]}}

    body = body_of("{{ profile.clear }}{{ profile.tags.pop }}{{ profile.attributes.x.pop }}.", data)

    assert body == "."
    assert data == {"first_name": "Ann", "tags": ["b", "a"], "attributes": {"x": [1]}}


def test_data_too_deep_to_copy_fails_that_recipient_only():
    deep: dict = {"first_name": "Ann"}
    for _ in range(5000):
        deep = {"x": deep}
    render = content_renderer(subject="", body="Hi {{ profile.first_name }}")

    with pytest.raises(RenderError, match="RecursionError"):
        render(deep)
    assert render({"first_name": "Bo"}) == ("", "Hi Bo")


def test_the_profiles_data_still_prints_and_serialises_as_before():
    profile = ann(tags=["a", "b"], nested={"k": [1, {"v": True}]})
    assert body_of("{{ profile.tags }} {{ profile.nested }}", profile) == (
        "['a', 'b'] {'k': [1, {'v': True}]}"
    )
    assert body_of("{{ profile.nested|json_script:'d' }}", profile) == (
        '<script id="d" type="application/json">{"k": [1, {"v": true}]}</script>'
    )
    assert body_of(
        "{% for k, v in profile.nested.items %}{{ k }}={{ v.0 }}{% endfor %}", profile
    ) == ("k=1")


# --- every construct the check accepts renders ---------------------------------------------

# One use of every tag of Django's default library: those message content may use render
# (for a profile with data, and for an empty one), the others are refused at save.
TAG_USES = {
    "autoescape": "{% autoescape off %}{{ profile.first_name }}{% endautoescape %}",
    "comment": "{% comment 'draft' %}{% url 'admin:index' %} {% load static %}{% endcomment %}ok",
    "cycle": (
        "{% for t in profile.tags %}{% cycle 'odd' 'even' as row silent %}{{ row }} {% endfor %}"
    ),
    "filter": "{% filter upper %}hi {{ profile.first_name }}{% endfilter %}",
    "firstof": "{% firstof profile.nickname profile.first_name 'there' %}",
    "for": (
        "{% for t in profile.tags reversed %}{{ forloop.counter }}{{ t }}{% empty %}-{% endfor %}"
    ),
    "if": (
        "{% if profile.plan == 'gold' %}VIP{% elif profile.plan %}member{% else %}guest{% endif %}"
    ),
    "ifchanged": (
        "{% for t in profile.tags %}{% ifchanged t %}{{ t }}{% else %}={% endifchanged %}"
        "{% endfor %}."
    ),
    "lorem": "{% lorem 3 w %}",
    "now": "{% now 'Y' as year %}{{ year }}",
    "regroup": (
        "{% regroup profile.orders|dictsort:'kind' by kind as groups %}"
        "{% for g in groups %}{{ g.grouper }}:{{ g.list|length }} {% endfor %}."
    ),
    "resetcycle": "{% for t in profile.tags %}{% cycle 'a' 'b' %}{% resetcycle %}{% endfor %}.",
    "spaceless": "{% spaceless %}<p> <b>{{ profile.first_name }}</b> </p>{% endspaceless %}",
    "templatetag": "{% templatetag openvariable %} profile {% templatetag closevariable %}",
    "verbatim": "{% verbatim %}{{ profile.first_name }} {% load static %}{% endverbatim %}",
    "widthratio": "{% widthratio profile.score 100 10 %} {% widthratio 1 2 10 as w %}{{ w }}",
    "with": "{% with name=profile.first_name|default:'you' %}{{ name }}{% endwith %}",
}
REFUSED_TAG_USES = {
    "csrf_token": "{% csrf_token %}",
    "debug": "{% debug %}",
    "load": "{% load static %}",
    "querystring": "{% querystring page=2 %}",
    "url": "{% url 'admin:index' %}",
}
LOADER_TAG_USES = {
    "block": "{% block content %}x{% endblock %}",
    "extends": "{% extends 'admin/base.html' %}",
    "include": "{% include 'admin/base.html' %}",
}

FILTER_USES = {
    "add": "{{ profile.score|add:1 }}",
    "addslashes": "{{ profile.quote|addslashes }}",
    "capfirst": "{{ profile.plan|capfirst }}",
    "center": '{{ profile.first_name|center:"9" }}',
    "cut": '{{ profile.first_name|cut:"n" }}',
    "default": '{{ profile.nickname|default:"there" }}',
    "default_if_none": '{{ profile.nothing|default_if_none:"none" }}',
    "dictsort": '{% for o in profile.orders|dictsort:"name" %}{{ o.name }}{% endfor %}.',
    "dictsortreversed": (
        '{% for o in profile.orders|dictsortreversed:"name" %}{{ o.name }}{% endfor %}.'
    ),
    "divisibleby": '{{ profile.score|default:0|divisibleby:"5" }}',
    "escape": "{{ profile.quote|escape }}",
    "escapejs": "{{ profile.quote|escapejs }}",
    "escapeseq": '{{ profile.tags|escapeseq|join:"," }}',
    "filesizeformat": "{{ profile.score|filesizeformat }}",
    "first": "{{ profile.tags|first }}.",
    "floatformat": '{{ profile.score|floatformat:"2" }}',
    "force_escape": "{{ profile.quote|force_escape }}",
    "get_digit": '{{ profile.score|get_digit:"1" }}',
    "iriencode": "{{ profile.quote|iriencode }}",
    "join": '{{ profile.tags|join:", " }}.',
    "json_script": '{{ profile.tags|json_script:"tags" }}',
    "last": "{{ profile.tags|last }}.",
    "length": "{{ profile.tags|length }}",
    "linebreaks": "{{ profile.quote|linebreaks }}",
    "linebreaksbr": "{{ profile.quote|linebreaksbr }}",
    "linenumbers": "{{ profile.quote|linenumbers }}",
    "ljust": '{{ profile.first_name|ljust:"9" }}.',
    "lower": "{{ profile.first_name|lower }}",
    "make_list": "{{ profile.first_name|make_list|join:'-' }}",
    "phone2numeric": "{{ profile.first_name|phone2numeric }}",
    "pluralize": "item{{ profile.score|pluralize }}",
    "random": "{{ profile.tags|random }}.",
    "rjust": '{{ profile.first_name|rjust:"9" }}',
    "safe": "{{ profile.quote|safe }}",
    "safeseq": '{{ profile.tags|safeseq|join:"," }}.',
    "slice": '{{ profile.tags|slice:":2"|join:"," }}.',
    "slugify": "{{ profile.quote|slugify }}.",
    "stringformat": '{{ profile.score|stringformat:"05d" }}',
    "striptags": "{{ profile.quote|striptags }}.",
    "title": "{{ profile.quote|title }}",
    "truncatechars": '{{ profile.quote|truncatechars:"5" }}',
    "truncatechars_html": '{{ profile.quote|truncatechars_html:"5" }}',
    "truncatewords": '{{ profile.quote|truncatewords:"1" }}',
    "truncatewords_html": '{{ profile.quote|truncatewords_html:"1" }}',
    "unordered_list": "{{ profile.tags|unordered_list }}.",
    "upper": "{{ profile.first_name|upper }}",
    "urlencode": "{{ profile.quote|urlencode }}",
    "urlize": "{{ profile.site|urlize }}.",
    "urlizetrunc": '{{ profile.site|urlizetrunc:"10" }}.',
    "wordcount": "{{ profile.quote|wordcount }}",
    "wordwrap": '{{ profile.quote|wordwrap:"5" }}',
    "yesno": '{{ profile.vip|yesno:"VIP,member" }}',
}
REFUSED_FILTER_USES = {
    "date": "{{ profile.birthday|date:'j F' }}",
    "pprint": "{{ profile.tags|pprint }}",
    "time": "{{ profile.opening|time:'H:i' }}",
    "timesince": "{{ profile.signed_up|timesince }}",
    "timeuntil": "{{ profile.renewal|timeuntil }}",
}

RICH = {
    "tags": ["a", "a", "b"],
    "score": 42,
    "quote": "Tom & 'Jerry'\n<b>bold</b> text",
    "orders": [
        {"kind": "book", "name": "B"},
        {"kind": "book", "name": "A"},
        {"kind": "pen", "name": "C"},
    ],
    "site": "see example.com today",
    "vip": True,
}


@pytest.mark.parametrize(
    "body",
    [
        "{% if 1 %}" * 51 + "x" + "{% endif %}" * 51,
        "{% for t in profile.tags %}" * 2000 + "x" + "{% endfor %}" * 2000,
        "{% if " + "not " * 2000 + "profile.x %}x{% endif %}",
    ],
    ids=["51 blocks", "2000 blocks", "2000 nots"],
)
def test_content_nested_too_deeply_to_render_is_refused_at_save(body):
    with pytest.raises(TemplateContentError, match="nested more than 50 levels deep"):
        validate_content(subject="", body=body)


def test_content_nested_within_the_limit_renders():
    nested = (
        "{% with a=1 %}{% if 1 %}" * 25
        + "{{ profile.first_name }}"
        + "{% endif %}{% endwith %}" * 25
    )
    validate_content(subject="", body=nested)
    assert in_a_thread(lambda: body_of(nested)) == "Ann"


def test_every_tag_and_filter_of_djangos_default_library_is_classified():
    assert set(TAG_USES) | set(REFUSED_TAG_USES) == set(defaulttags.register.tags)
    assert set(FILTER_USES) | set(REFUSED_FILTER_USES) == set(defaultfilters.register.filters)


@pytest.mark.parametrize(
    "body", [*TAG_USES.values(), *FILTER_USES.values()], ids=[*TAG_USES, *FILTER_USES]
)
@pytest.mark.parametrize("html", [False, True], ids=["text", "html"])
def test_every_construct_the_check_accepts_renders(body, html):
    validate_content(subject="", body="" if html else body, html_body=body if html else "")

    for profile in (ann(**RICH), profile_context({})):
        if html:
            assert render_html(html_body=body, profile=profile) is not None
        else:
            _, rendered = render_content(subject=body, body=body + "!", profile=profile)
            assert rendered.endswith("!")


def test_the_allowed_tags_render_what_django_renders():
    rendered = {name: body_of(body, ann(**RICH)) for name, body in TAG_USES.items()}
    assert rendered["filter"] == "HI ANN"
    assert rendered["comment"] == "ok"
    assert rendered["cycle"] == "odd even odd "
    assert rendered["regroup"] == "book:2 pen:1 ."
    assert rendered["ifchanged"] == "a=b."
    assert rendered["verbatim"] == "{{ profile.first_name }} {% load static %}"
    assert rendered["widthratio"] == "4 5"
    assert rendered["templatetag"] == "{{ profile }}"


def test_a_filter_block_ending_in_a_number_or_a_list_writes_it_as_text():
    body = "{% filter length %}{{ profile.first_name }}{% endfilter %}"
    assert body_of(body + " {% filter make_list %}ab{% endfilter %}") == "3 ['a', 'b']"


@pytest.mark.parametrize(
    "body",
    [*REFUSED_TAG_USES.values(), *LOADER_TAG_USES.values()],
    ids=[*REFUSED_TAG_USES, *LOADER_TAG_USES],
)
def test_tags_that_reach_outside_the_message_are_refused_at_save(body):
    name = body.split()[1]
    with pytest.raises(TemplateContentError) as excinfo:
        validate_content(subject="", body=body)
    message = excinfo.value.message_dict["body"][0]
    assert f"the {{% {name} %}} tag is not allowed in message content" in message
    with pytest.raises(RenderError, match="not allowed"):
        render_content(subject="", body=body, profile=ann())


@pytest.mark.parametrize("name", list(REFUSED_FILTER_USES))
def test_filters_left_out_of_the_sandbox_are_refused_at_save(name):
    with pytest.raises(TemplateContentError) as excinfo:
        validate_content(subject="", body=REFUSED_FILTER_USES[name])
    message = excinfo.value.message_dict["body"][0]
    assert f"the |{name} filter is not allowed in message content" in message


# --- in a real delivery batch --------------------------------------------------------------


@pytest.fixture
def sinks():
    with running_sinks() as sink, override_settings(**sink.provider_settings()):
        yield sink


@pytest.mark.django_db
def test_a_budget_hit_in_a_delivery_batch_fails_that_recipient_only(sinks, settings):
    settings.SALVO_RENDER_MAX_CHARS = 1_000
    ProfileFactory(external_id="short", attributes={"tags": ["a", "b"]})
    ProfileFactory(external_id="long", attributes={"tags": ["x" * 20] * 100})
    ProfileFactory(external_id="none", attributes={})
    campaign = make_live_campaign(
        actions=[sms_action(body="Hi{% for t in profile.tags %} {{ t }}{% endfor %}")]
    )
    execution = plan(campaign)

    send_all(execution)

    rows = {d.profile.external_id: d for d in Delivery.objects.select_related("profile")}
    assert rows["long"].status == DeliveryStatus.FAILED
    assert rows["long"].error == (
        "Cannot render: body: the message is longer than SALVO_RENDER_MAX_CHARS (1,000 characters)."
    )
    assert rows["short"].status == rows["none"].status == DeliveryStatus.SENT
    assert sorted(r["json"]["text"] for r in sinks.received("sms")) == ["Hi", "Hi a b"]
