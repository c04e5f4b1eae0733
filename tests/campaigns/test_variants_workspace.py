"""A marketer's workspace covers every variant of a content experiment: the preview shows A
and each variant rendered for the profile (and the group the profile is in), proofs send
the variants asked for (each marked with its label) and list them, and the review's
content warnings read every variant's subject, text and HTML part, and A's HTML part."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from campaigns.choices import ProofStatus
from campaigns.experiments import bucket_of, group_of, split_of
from campaigns.models import Assignment, Delivery, ProofSend
from campaigns.preview import campaign_preview
from campaigns.proofs import campaign_proof_request, proof_sends_send
from campaigns.review import activation_review
from tests.campaigns.factories import email_action, make_campaign, sms_action
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.django_db

HTML = {
    "A": "<p>A for {{ profile.first_name }}</p>",
    "B": "<p>B for {{ profile.first_name }}</p>",
    "C": "<p>C for {{ profile.first_name }}</p>",
}


def ab_campaign(*, holdout: int = 0, html_c: str = HTML["C"], **fields: Any) -> Any:
    """An email and an SMS with variants B (30 %) and C (20 %); A keeps 50 %."""
    return make_campaign(
        holdout_share=holdout,
        actions=[
            email_action(
                subject="A: hi {{ profile.first_name }}",
                body="Text A {{ profile.first_name }}",
                html_body=HTML["A"],
                variants=[
                    {
                        "share": 30,
                        "subject": "B: hi {{ profile.first_name }}",
                        "body": "Text B {{ profile.first_name }}",
                        "html_body": HTML["B"],
                    },
                    {
                        "share": 20,
                        "subject": "C: hi {{ profile.first_name }}",
                        "body": "Text C {{ profile.first_name }}",
                        "html_body": html_c,
                    },
                ],
            ),
            sms_action(
                body="SMS A",
                variants=[{"share": 30, "body": "SMS B"}, {"share": 20, "body": "SMS C"}],
            ),
        ],
        **fields,
    )


@pytest.fixture
def ann() -> Any:
    return ProfileFactory.create(
        external_id="ann", email="ann@example.com", attributes={"first_name": "Ann"}
    )


def expected_group(campaign: Any, profile: Any, *, holdout: int = 0) -> str:
    return group_of(
        bucket_of(campaign.pk, profile.pk),
        holdout_share=holdout,
        split=split_of([30, 20]),
    )


# --- the preview ---------------------------------------------------------------------------


def test_the_preview_renders_each_variant_for_the_profile_and_names_its_group(ann):
    campaign = ab_campaign()
    preview = campaign_preview(campaign=campaign, profile=ann, user=None)
    email, sms = preview.actions
    assert (email.label, email.share, email.subject, email.text) == (
        "A",
        50,
        "A: hi Ann",
        "Text A Ann",
    )
    assert email.html == "<p>A for Ann</p>"
    assert [(v.label, v.share, v.subject, v.text, v.html) for v in email.variants] == [
        ("B", 30, "B: hi Ann", "Text B Ann", "<p>B for Ann</p>"),
        ("C", 20, "C: hi Ann", "Text C Ann", "<p>C for Ann</p>"),
    ]
    # Each variant goes to the same address, with the engine's unsubscribe headers.
    assert {v.to for v in email.variants} == {"ann@example.com"}
    assert email.variants[0].headers == email.headers
    assert [(v.label, v.body, v.sms.segments) for v in sms.variants] == [
        ("B", "SMS B", 1),
        ("C", "SMS C", 1),
    ]
    group = expected_group(campaign, ann)
    assert preview.experiment is not None
    assert (preview.experiment.group, preview.experiment.stored) == (group, False)
    assert preview.experiment.held_out is False
    gets = [shown.label for shown in [email, *email.variants] if shown.profile_gets]
    assert gets == [group]
    assert Delivery.objects.count() == 0
    assert not Assignment.objects.exists()  # computed, never stored by a preview


def test_the_stored_assignment_wins_over_the_computed_group(ann):
    campaign = ab_campaign()
    stored = "C" if expected_group(campaign, ann) != "C" else "B"
    Assignment.objects.create(
        campaign=campaign, profile=ann, group=stored, assigned_at=timezone.now()
    )
    preview = campaign_preview(campaign=campaign, profile=ann, user=None)
    assert preview.experiment is not None
    assert (preview.experiment.group, preview.experiment.stored) == (stored, True)
    email, sms = preview.actions
    for action in (email, sms):
        assert [s.label for s in [action, *action.variants] if s.profile_gets] == [stored]


def test_the_stored_assignment_wins_and_a_holdout_is_said(ann):
    campaign = ab_campaign(holdout=10)
    Assignment.objects.create(
        campaign=campaign, profile=ann, group="holdout", assigned_at=timezone.now()
    )
    preview = campaign_preview(campaign=campaign, profile=ann, user=None)
    assert preview.experiment is not None
    assert (preview.experiment.group, preview.experiment.stored) == ("holdout", True)
    assert preview.experiment.held_out is True
    assert preview.experiment.holdout_share == 10
    email = preview.actions[0]
    assert not any(shown.profile_gets for shown in [email, *email.variants])
    # The content is shown anyway.
    assert [v.subject for v in email.variants] == ["B: hi Ann", "C: hi Ann"]


def test_a_campaign_without_experiment_has_no_group(ann):
    campaign = make_campaign(actions=[email_action(subject="Hi")])
    preview = campaign_preview(campaign=campaign, profile=ann, user=None)
    assert preview.experiment is None
    assert preview.actions[0].variants == []
    assert preview.actions[0].profile_gets is True


def test_a_skipped_profile_still_sees_each_variant_with_its_html(ann):
    ann.consent_email = False
    ann.save()
    preview = campaign_preview(campaign=ab_campaign(), profile=ann, user=None)
    email = preview.actions[0]
    assert email.skipped == "Opted out of Email marketing."
    assert email.html == "<p>A for Ann</p>"
    assert [(v.skipped, v.subject, v.html) for v in email.variants] == [
        ("Opted out of Email marketing.", "B: hi Ann", "<p>B for Ann</p>"),
        ("Opted out of Email marketing.", "C: hi Ann", "<p>C for Ann</p>"),
    ]


def test_api_preview_has_the_variants_and_the_group(api_client, ann):
    campaign = ab_campaign()
    response = api_client.post(
        f"/api/campaigns/{campaign.pk}/preview/", {"profile": ann.pk}, format="json"
    )
    assert response.status_code == 200, response.content
    data = response.json()
    group = expected_group(campaign, ann)
    assert data["experiment"] == {
        "group": group,
        "stored": False,
        "held_out": False,
        "holdout_share": 0,
        "split": [
            {"label": "A", "share": 50},
            {"label": "B", "share": 30},
            {"label": "C", "share": 20},
        ],
    }
    email = data["actions"][0]
    assert (email["label"], email["share"]) == ("A", 50)
    assert [(v["label"], v["subject"], v["html"]) for v in email["variants"]] == [
        ("B", "B: hi Ann", "<p>B for Ann</p>"),
        ("C", "C: hi Ann", "<p>C for Ann</p>"),
    ]
    gets = [s["label"] for s in [email, *email["variants"]] if s["profile_gets"]]
    assert gets == [group]
    assert "variants" not in email["variants"][0]
    schema = api_client.get("/api/schema/?format=json").json()["components"]["schemas"]
    assert "variants" in schema["ActionPreview"]["properties"]
    assert "group" in schema["PreviewExperiment"]["properties"]


def test_command_preview_prints_each_variant_and_the_group(ann):
    campaign = ab_campaign()
    out = StringIO()
    call_command("campaign", "preview", str(campaign.pk), "--profile", "ann", stdout=out)
    text = out.getvalue()
    group = expected_group(campaign, ann)
    assert f"Experiment: this profile is in group {group} (computed" in text
    assert "variant B (30 %)" in text
    assert "subject: C: hi Ann" in text
    assert "<p>C for Ann</p>" in text
    assert "SMS C" in text


def preview_page(client: Any, campaign: Any, profile: Any) -> str:
    url = reverse("admin:campaigns_campaign_preview", args=[campaign.pk])
    return client.get(f"{url}?profile={profile.pk}").content.decode()


def test_admin_preview_shows_each_variant_in_its_own_section(admin_client, ann):
    campaign = ab_campaign()
    page = preview_page(admin_client, campaign, ann)
    group = expected_group(campaign, ann)
    assert f'id="preview-group">{group}<' in page
    for channel in ("email", "sms"):
        for label in "ABC":
            assert f'id="preview-{channel}-{label}-title"' in page
    start = page.index('data-variant="C" data-channel="email"')
    c = page[start : page.index("</section>", start)]
    assert '<dd data-role="subject">C: hi Ann</dd>' in c
    assert "&lt;p&gt;C for Ann&lt;/p&gt;" in c  # in the sandboxed frame's srcdoc
    assert 'title="HTML part of the email, variant C"' in c
    # Every id on the page is unique.
    import re

    ids = re.findall(r' id="([^"]+)"', page)
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


# --- proofs --------------------------------------------------------------------------------


def request_and_send(campaign: Any, capture: Any, **kwargs: Any) -> list[ProofSend]:
    with capture(execute=False):
        sends = campaign_proof_request(campaign=campaign, user=None, **kwargs)
    proof_sends_send(proof_ids=[send.pk for send in sends])
    return list(ProofSend.objects.filter(pk__in=[s.pk for s in sends]).order_by("pk"))


def test_a_proof_of_b_and_c_reaches_the_sink_with_their_content(
    local_sinks: Any, django_capture_on_commit_callbacks: Any
) -> None:
    tester = ProfileFactory(external_id="me", is_test=True, attributes={"first_name": "Me"})
    campaign = ab_campaign()
    sends = request_and_send(campaign, django_capture_on_commit_callbacks, variants=["B", "C"])
    assert [(s.action.channel, s.variant, s.status) for s in sends] == [
        ("email", "B", ProofStatus.SENT),
        ("email", "C", ProofStatus.SENT),
        ("sms", "B", ProofStatus.SENT),
        ("sms", "C", ProofStatus.SENT),
    ]
    emails = local_sinks.wait_for(2, channel="email")
    assert sorted((e["to"], e["headers"]["Subject"]) for e in emails) == [
        (tester.email, "[Proof B] B: hi Me"),
        (tester.email, "[Proof C] C: hi Me"),
    ]
    assert sorted(m["json"]["text"] for m in local_sinks.wait_for(2, channel="sms")) == [
        "SMS B",
        "SMS C",
    ]


def test_a_proof_sends_every_variant_by_default(
    local_sinks: Any, django_capture_on_commit_callbacks: Any
) -> None:
    ProfileFactory(is_test=True, attributes={"first_name": "Me"})
    campaign = make_campaign(
        actions=[
            email_action(
                subject="A {{ profile.first_name }}",
                variants=[{"share": 40, "subject": "B {{ profile.first_name }}", "body": "b"}],
            ),
            sms_action(body="only A"),
        ]
    )
    sends = request_and_send(campaign, django_capture_on_commit_callbacks)
    assert [(s.action.channel, s.variant) for s in sends] == [
        ("email", "A"),
        ("email", "B"),
        ("sms", "A"),
    ]
    subjects = sorted(e["headers"]["Subject"] for e in local_sinks.wait_for(2, channel="email"))
    assert subjects == ["[Proof A] A Me", "[Proof B] B Me"]


def test_a_proof_of_a_variant_the_version_lacks_is_refused() -> None:
    ProfileFactory(is_test=True)
    with pytest.raises(ValidationError) as refused:
        campaign_proof_request(campaign=ab_campaign(), user=None, variants=["D"])
    assert "has no variant D" in " ".join(refused.value.message_dict["variants"])
    assert not ProofSend.objects.exists()


@override_settings(SALVO_PROOF_MAX_RECIPIENTS=1)
def test_the_limit_counts_test_profiles_and_says_how_many_messages_each_gets() -> None:
    ProfileFactory.create_batch(2, is_test=True)
    with pytest.raises(ValidationError) as refused:
        campaign_proof_request(campaign=ab_campaign(), user=None)
    words = " ".join(refused.value.message_dict["profiles"])
    assert "at most 1 test profiles (SALVO_PROOF_MAX_RECIPIENTS); 2 were asked for" in words
    assert "Each test profile gets 6 messages, one per action and variant (12 in all" in words


def test_the_proof_doors_take_variants_and_list_them(
    api_client: Any, admin_client: Any, django_capture_on_commit_callbacks: Any
) -> None:
    ProfileFactory(external_id="me", is_test=True)
    campaign = ab_campaign()
    with django_capture_on_commit_callbacks(execute=False):
        response = api_client.post(
            f"/api/campaigns/{campaign.pk}/proof/", {"variants": ["C"]}, format="json"
        )
    assert response.status_code == 202, response.content
    assert [(r["channel"], r["variant"]) for r in response.json()] == [
        ("email", "C"),
        ("sms", "C"),
    ]
    bad = api_client.post(f"/api/campaigns/{campaign.pk}/proof/", {"variants": ["Z"]})
    assert bad.status_code == 400
    assert "variants" in bad.json()
    listed = api_client.get(f"/api/campaigns/{campaign.pk}/proofs/").json()["results"]
    assert sorted(r["variant"] for r in listed) == ["C", "C"]

    out = StringIO()
    with django_capture_on_commit_callbacks(execute=False):
        call_command("campaign", "proof", str(campaign.pk), "--variant", "B", "--json", stdout=out)
    assert {r["variant"] for r in json.loads(out.getvalue())} == {"B"}
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=False):
        call_command("campaign", "proof", str(campaign.pk), "--variant", "A", stdout=out)
    assert "Email A → me: Sending" in out.getvalue()

    page = admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert "<th>Variant</th>" in page
    assert 'name="proof_variants" value="C" id="proof-variant-C"' in page
    assert '<td data-variant="C">C</td>' in page
    with django_capture_on_commit_callbacks(execute=False):
        response = admin_client.post(
            f"/admin/campaigns/campaign/{campaign.pk}/proof/",
            {"proof_variants": ["B"]},
            follow=True,
        )
    assert "(2 messages) to me" in response.content.decode()
    assert ProofSend.objects.filter(variant="B").count() == 4


# --- the review ----------------------------------------------------------------------------


def test_the_review_warns_about_an_unknown_variable_in_variant_cs_html(ann):
    campaign = ab_campaign(html_c="<p>C for {{ profile.nickname }}</p>")
    review = activation_review(campaign=campaign, sample=False)
    unknown = [c for c in review.checks if c.code == "unknown_variable"]
    assert [(c.field, c.message) for c in unknown] == [
        (
            "actions[0].variants[1].html_body",
            "Email action, variant C, html_body: no profile field or known attribute "
            "provides “profile.nickname”; it renders empty.",
        )
    ]


def test_the_review_reads_as_html_and_each_variants_parts(ann):
    campaign = make_campaign(
        actions=[
            email_action(
                html_body="<p>{{ profile.shoe_size }}</p>",
                variants=[
                    {
                        "share": 50,
                        "subject": "{{ profile.hat }}",
                        "body": "{{ profile.coat }}",
                        "html_body": "<p>ok</p>",
                    }
                ],
            ),
            sms_action(variants=[{"share": 50, "body": "ł" * 80}]),
        ]
    )
    checks = activation_review(campaign=campaign, sample=False).checks
    fields = {(c.code, c.field) for c in checks}
    assert {
        ("unknown_variable", "actions[0].html_body"),
        ("unknown_variable", "actions[0].variants[0].subject"),
        ("unknown_variable", "actions[0].variants[0].body"),
        ("sms_segments", "actions[1].variants[0].body"),
    } <= fields


def test_an_action_without_variants_gives_every_group_its_own_content(ann):
    campaign = make_campaign(
        actions=[
            email_action(subject="A", variants=[{"share": 50, "subject": "B", "body": "b"}]),
            sms_action(body="Only A"),
        ]
    )
    Assignment.objects.create(campaign=campaign, profile=ann, group="B", assigned_at=timezone.now())
    email, sms = campaign_preview(campaign=campaign, profile=ann, user=None).actions
    assert [s.label for s in [email, *email.variants] if s.profile_gets] == ["B"]
    assert (sms.label, sms.share, sms.profile_gets, sms.variants) == ("A", 100, True, [])


def test_the_review_pages_sample_shows_each_variant(admin_client, ann):
    from tests.segments.factories import SegmentFactory

    segment = SegmentFactory(rules={"all": [{"field": "external_id", "op": "eq", "value": "ann"}]})
    campaign = ab_campaign(segment=segment)
    page = admin_client.get(
        reverse("admin:campaigns_campaign_review", args=[campaign.pk])
    ).content.decode()
    assert "<strong>Variant C (20 %):</strong> C: hi Ann · Text C Ann" in page
