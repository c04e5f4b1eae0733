import io

import pytest
from django.core.exceptions import ValidationError

from segments import selectors, services
from segments.choices import ConsentSource, SegmentKind
from segments.imports import ImportRefused
from segments.models import AudienceMember, Profile, Segment
from tests.segments.factories import ProfileFactory, SegmentFactory

pytestmark = pytest.mark.django_db


def run_import(text, **kwargs):
    data = text.encode() if isinstance(text, str) else text
    return services.profiles_import(user=None, stream=io.BytesIO(data), **kwargs)


# --- profiles and consent ----------------------------------------------------------------


def test_profile_create_validates_email_and_e164_phone():
    with pytest.raises(ValidationError) as error:
        services.profile_create(data={"external_id": "x", "email": "nope", "phone": "0612"})
    assert set(error.value.message_dict) == {"email", "phone"}
    assert "E.164" in error.value.message_dict["phone"][0]
    assert not Profile.objects.exists()


def test_profile_phone_is_normalised_and_external_id_unique():
    profile = services.profile_create(data={"external_id": "x", "phone": "+33 6 12-34.56 78"})
    assert profile.phone == "+33612345678"
    with pytest.raises(ValidationError) as error:
        services.profile_create(data={"external_id": "x"})
    assert "external_id" in error.value.message_dict


def test_unknown_time_zone_is_refused():
    with pytest.raises(ValidationError) as error:
        services.profile_create(data={"external_id": "x", "time_zone": "Mars/Olympus"})
    assert "time_zone" in error.value.message_dict


def test_consent_change_records_time_and_source_only_when_it_changes():
    profile = services.profile_create(data={"external_id": "x"})
    assert profile.consent_sms_changed_at is None
    profile = services.profile_update(
        profile=profile, data={}, consent={"sms": False}, source=ConsentSource.ADMIN
    )
    assert profile.consent_sms is False
    assert profile.consent_sms_source == ConsentSource.ADMIN
    first_change = profile.consent_sms_changed_at
    assert first_change is not None
    profile = services.profile_update(profile=profile, data={}, consent={"sms": False})
    assert profile.consent_sms_changed_at == first_change
    assert profile.consent_sms_source == ConsentSource.ADMIN
    assert profile.consent_email_changed_at is None


# --- import ---------------------------------------------------------------------------------

CSV = (
    "external_id,email,phone,consent_sms,age,country,zip\n"
    "u1,one@example.com,+33 6 12 34 56 78,no,30,FR,01234\n"
    "u2,bad-email,,yes,17,BE,\n"
    ",nobody@example.com,,,,,\n"
    "u3,three@example.com,+1555,,,DE,\n"
    "u4,four@example.com,,maybe,,,\n"
    "u5,five@example.com\n"
)


def test_csv_import_keeps_good_rows_and_reports_bad_ones_with_line_numbers():
    summary = run_import(CSV, filename="people.csv")
    assert (summary.created, summary.updated, summary.rejected) == (1, 0, 5)
    reasons = {r.line: r.reason for r in summary.rejections}
    assert sorted(reasons) == [3, 4, 5, 6, 7]
    assert reasons[3].startswith("email:")
    assert reasons[4].startswith("external_id:")
    assert reasons[5].startswith("phone:")
    assert "E.164" in reasons[5]
    assert reasons[6].startswith("consent_sms:")
    assert "expected 7 fields, found 2" in reasons[7]
    profile = Profile.objects.get()
    assert profile.external_id == "u1"
    assert profile.phone == "+33612345678"
    assert profile.consent_sms is False
    assert profile.consent_sms_source == ConsentSource.IMPORT
    # Numbers become JSON numbers; a zero-padded code stays text.
    assert profile.attributes == {"age": 30, "country": "FR", "zip": "01234"}


def test_import_upserts_by_external_id_and_merges_attributes():
    ProfileFactory.create(external_id="u1", email="old@example.com", attributes={"a": 1, "b": 2})
    summary = run_import(
        '{"external_id": "u1", "attributes": {"b": 3, "c": {"d": 1}}}\n'
        '{"external_id": "u9", "email": "nine@example.com", "consent": {"push": false}}\n',
        filename="x.jsonl",
    )
    assert (summary.created, summary.updated, summary.rejected) == (1, 1, 0)
    u1 = Profile.objects.get(external_id="u1")
    assert u1.email == "old@example.com"  # not given: unchanged
    assert u1.attributes == {"a": 1, "b": 3, "c": {"d": 1}}
    u9 = Profile.objects.get(external_id="u9")
    assert u9.consent_push is False
    assert u9.consent_push_source == ConsentSource.IMPORT


def test_import_update_changes_only_given_values_and_records_real_consent_changes():
    ProfileFactory.create(external_id="u1", email="one@example.com", phone="+33612345678")
    services.profile_create(
        data={"external_id": "u2", "locale": "fr"},
        consent={"email": False},
        source=ConsentSource.ADMIN,
    )
    summary = run_import(
        "external_id,email,phone,locale,consent_sms,consent_email\n"
        "u1,,,de,no,\n"
        "u2,two@example.com,,,,false\n",
        format="csv",
    )
    assert (summary.created, summary.updated, summary.rejected) == (0, 2, 0)
    u1 = Profile.objects.get(external_id="u1")
    assert (u1.email, u1.phone, u1.locale) == ("one@example.com", "+33612345678", "de")
    assert u1.consent_sms is False
    assert u1.consent_sms_source == ConsentSource.IMPORT
    assert u1.consent_sms_changed_at is not None
    assert u1.consent_email is True
    assert u1.consent_email_changed_at is None
    u2 = Profile.objects.get(external_id="u2")
    assert (u2.email, u2.locale) == ("two@example.com", "fr")
    # The file repeats the stored opt-out: not a change, so the admin's record stays.
    assert u2.consent_email is False
    assert u2.consent_email_source == ConsentSource.ADMIN


def test_a_later_duplicate_row_wins_whatever_the_chunk():
    text = (
        "external_id,email,plan\n"
        "dup,first@example.com,free\n"
        "other,o@example.com,\n"
        "dup,second@example.com,\n"
    )
    for chunk_rows in (1, 1000):
        Profile.objects.all().delete()
        summary = run_import(text, format="csv", chunk_rows=chunk_rows)
        assert (summary.created, summary.updated, summary.rejected) == (2, 1, 0)
        dup = Profile.objects.get(external_id="dup")
        assert dup.email == "second@example.com"
        assert dup.attributes == {"plan": "free"}


def test_jsonl_bad_lines_are_rejected_one_by_one():
    summary = run_import(
        '{"external_id": "ok"}\n'
        "{not json\n"
        "\n"
        '["a list"]\n'
        '{"external_id": "x", "colour": "red"}\n'
        '{"external_id": "y", "consent": {"fax": true}}\n'
        '{"external_id": "z", "attributes": "nope"}\n',
        format="jsonl",
    )
    assert summary.created == 1
    assert [r.line for r in summary.rejections] == [2, 4, 5, 6, 7]
    assert "invalid JSON" in summary.rejections[0].reason
    assert "unknown field(s) colour" in summary.rejections[2].reason


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"external_id\nu1\n" + b"\x00\x01\x02" * 10, "binary"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ("external_id\nu1\n".encode("utf-16"), "UTF-16"),
        (b"external_id\n\xff\xfe\xfa\n", "not UTF-8"),
        (b"external_id\n" + b"x" * (1024 * 1024 + 10) + b"\n", "longer than"),
        (b"", "empty"),
        (b"email,age\na@example.com,3\n", "no external_id column"),
        (b'external_id,email\n"u1,broken\n' + b"y" * 140_000 + b"\n", "cannot be read"),
    ],
)
def test_unreadable_files_are_refused_whole(content, message):
    ProfileFactory.create(external_id="before")
    with pytest.raises(ImportRefused) as error:
        run_import(content, format="csv", chunk_rows=1)
    assert message in " ".join(error.value.messages)
    assert list(Profile.objects.values_list("external_id", flat=True)) == ["before"]


def test_a_refused_file_keeps_nothing_from_its_earlier_chunks():
    content = b"external_id\n" + b"".join(b"r%d\n" % i for i in range(50)) + b"\x00bad\n"
    with pytest.raises(ImportRefused):
        run_import(content, format="csv", chunk_rows=10)
    assert not Profile.objects.exists()


def test_import_into_a_static_segment():
    summary = run_import("external_id\nu1\nu2\n", format="csv", segment_name="VIP list")
    segment = Segment.objects.get(name="VIP list")
    assert segment.kind == SegmentKind.STATIC
    assert summary.segment == "VIP list"
    assert selectors.segment_count(segment=segment) == 2
    run_import("external_id\nu2\nu3\n", format="csv", segment_name="VIP list")
    assert sorted(segment.members.values_list("external_id", flat=True)) == ["u1", "u2", "u3"]


def test_import_refuses_a_rule_segment_as_target():
    SegmentFactory.create(name="Rules")
    with pytest.raises(ValidationError):
        run_import("external_id\nu1\n", format="csv", segment_name="Rules")
    assert not Profile.objects.exists()


# --- segments -------------------------------------------------------------------------------


def test_segment_create_refuses_invalid_rules_with_the_path():
    with pytest.raises(ValidationError) as error:
        services.segment_create(
            user=None,
            name="Bad",
            rules={"all": [{"field": "attributes.age", "op": "gtx", "value": 1}]},
        )
    assert error.value.message_dict["rules"] == ['all[0].op: unknown operator "gtx"']
    assert not Segment.objects.exists()


def test_segment_kind_cannot_change_and_static_has_no_rules():
    segment = services.segment_create(user=None, name="S", kind=SegmentKind.STATIC)
    with pytest.raises(ValidationError):
        services.segment_update(segment=segment, user=None, data={"kind": SegmentKind.RULES})
    with pytest.raises(ValidationError):
        services.segment_update(segment=segment, user=None, data={"rules": {"all": []}})


def test_estimate_preview_and_freeze():
    for i in range(5):
        ProfileFactory.create(external_id=f"fr{i}", attributes={"country": "FR"})
    ProfileFactory.create(external_id="de", attributes={"country": "DE"})
    segment = services.segment_create(
        user=None, name="French", rules={"field": "attributes.country", "op": "eq", "value": "FR"}
    )
    assert selectors.segment_estimate(segment=segment) == selectors.Estimate(5)
    preview = selectors.segment_preview(segment=segment, user=None, limit=3)
    assert [p.external_id for p in preview] == ["fr0", "fr1", "fr2"]
    frozen = services.segment_freeze(segment=segment, user=None, name="French, frozen")
    assert frozen.kind == SegmentKind.STATIC
    ProfileFactory.create(external_id="fr-late", attributes={"country": "FR"})
    assert selectors.segment_estimate(segment=segment) == selectors.Estimate(6)
    assert selectors.segment_count(segment=frozen) == 5
    with pytest.raises(ValidationError):
        services.segment_freeze(segment=segment, user=None, name="French, frozen")


def test_freezing_an_empty_rule_segment_gives_an_empty_static_segment():
    segment = services.segment_create(user=None, name="None", rules={"any": []})
    frozen = services.segment_freeze(segment=segment, user=None, name="None frozen")
    assert selectors.segment_count(segment=frozen) == 0


# --- audience snapshots -------------------------------------------------------------------


@pytest.fixture
def audience():
    profiles = [
        ProfileFactory.create(attributes={"country": "FR" if i % 3 else "DE"}) for i in range(40)
    ]
    segment = services.segment_create(
        user=None, name="FR", rules={"field": "attributes.country", "op": "eq", "value": "FR"}
    )
    return segment, profiles


def test_snapshot_size_equals_estimate_and_batches_cover_each_member_once(audience):
    segment, _profiles = audience
    snapshot = services.audience_snapshot_create(segment=segment)
    expected = set(selectors.segment_profiles(segment=segment).values_list("id", flat=True))
    assert snapshot.size == selectors.segment_count(segment=segment) == len(expected)
    batches = list(selectors.audience_member_batches(snapshot=snapshot, batch_size=7))
    assert all(len(batch) <= 7 for batch in batches)
    seen = [profile_id for batch in batches for profile_id in batch]
    assert len(seen) == len(set(seen)) == len(expected)
    assert set(seen) == expected
    keys = list(AudienceMember.objects.filter(snapshot=snapshot).values_list("key", flat=True))
    assert sorted(keys) == list(range(1, snapshot.size + 1))
    assert (
        selectors.audience_member_ids_between(snapshot=snapshot, first_key=1, last_key=5)
        == sorted(expected)[:5]
    )


def test_snapshot_in_profile_id_slices_matches_a_whole_snapshot(audience):
    segment, _profiles = audience
    whole = services.audience_snapshot_create(segment=segment)
    ranges = selectors.profile_id_ranges(chunk_size=9)
    assert len(ranges) > 3
    sliced = None
    for low_high in ranges:
        sliced = services.audience_snapshot_create(
            segment=segment, profile_id_range=low_high, snapshot=sliced
        )
    assert sliced is not None
    # A slice resolved twice (a retried task), the last one or an earlier one, adds nothing.
    for low_high in (ranges[-1], ranges[0]):
        again = services.audience_snapshot_create(
            segment=segment, profile_id_range=low_high, snapshot=sliced
        )
        assert again.size == sliced.size == whole.size
    keys = list(AudienceMember.objects.filter(snapshot=sliced).values_list("key", flat=True))
    assert sorted(keys) == list(range(1, whole.size + 1))
    ids = [pid for batch in selectors.audience_member_batches(snapshot=sliced) for pid in batch]
    assert ids == sorted(ids)
    assert ids == [
        pid for batch in selectors.audience_member_batches(snapshot=whole) for pid in batch
    ]


def test_snapshot_of_a_static_segment_and_of_nothing():
    members = [ProfileFactory.create() for _ in range(3)]
    ProfileFactory.create()
    static = services.segment_create(user=None, name="Static", kind=SegmentKind.STATIC)
    static.members.set(members)
    assert services.audience_snapshot_create(segment=static).size == 3
    nobody = services.segment_create(user=None, name="Nobody", rules={"any": []})
    assert services.audience_snapshot_create(segment=nobody).size == 0


def test_csv_batch_of_new_profiles_stores_what_the_row_by_row_path_stores():
    text = (
        "external_id,email,locale,consent_sms,plan,score,note\n"
        'n1,n1@example.com,fr,no,pro,1.5,"tab\there"\n'
        "n2,,,,,,back\\slash\n"
        "n3,n3@example.com,de,yes,,,\n"
    )
    summary = run_import(text, format="csv", segment_name="Batch")
    assert (summary.created, summary.updated, summary.rejected) == (3, 0, 0)
    n1, n2, n3 = Profile.objects.order_by("external_id")
    assert (n1.email, n1.locale, n1.consent_sms) == ("n1@example.com", "fr", False)
    assert n1.consent_sms_source == ConsentSource.IMPORT
    assert n1.consent_sms_changed_at is not None
    assert (n1.consent_email, n1.consent_email_source, n1.consent_email_changed_at) == (
        True,
        "",
        None,
    )
    assert n1.attributes == {"plan": "pro", "score": 1.5, "note": "tab\there"}
    assert (n2.email, n2.locale, n2.consent_sms, n2.consent_sms_source) == ("", "", True, "")
    assert n2.attributes == {"note": "back\\slash"}
    assert (n3.consent_sms, n3.consent_sms_source) == (True, ConsentSource.IMPORT)
    assert n3.attributes == {}
    segment = Segment.objects.get(name="Batch")
    assert segment.members.count() == 3
    # A batch naming a stored profile is upserted instead.
    summary = run_import("external_id,plan\nn1,team\nn4,free\n", format="csv", segment_name="Batch")
    assert (summary.created, summary.updated, summary.rejected) == (1, 1, 0)
    assert Profile.objects.get(external_id="n1").attributes["plan"] == "team"
    assert segment.members.count() == 4


def test_csv_quotes_crlf_and_unusual_but_valid_values_keep_their_line_numbers():
    text = (
        "external_id,email,phone,note\r\n"
        ' a1 ,"first.last@sub-domain.example.museum",+33612345678,"two\r\nlines"\r\n'
        "a2,o'hara@example.com,+33 6 12 34 56 79,plain\r\n"
        "a3,not-an-email,,\r\n"
        "\r\n"
        "a4,\"quoted@example.com\",,'007'\r\n"
    )
    summary = run_import(text, format="csv")
    assert (summary.created, summary.updated, summary.rejected) == (3, 0, 1)
    assert [(r.line, r.reason.split(":")[0]) for r in summary.rejections] == [(5, "email")]
    a1, a2, a4 = Profile.objects.order_by("external_id")
    assert (a1.external_id, a1.email) == ("a1", "first.last@sub-domain.example.museum")
    assert a1.attributes == {"note": "two\r\nlines"}
    assert a2.phone == "+33612345679"
    assert a4.attributes == {"note": "'007'"}


def test_chunks_of_new_and_stored_profiles_each_go_the_right_way():
    # Chunks of two: new only, then one stored profile among new ones, then stored
    # only, then new only again (copied straight in on PostgreSQL, upserted otherwise).
    ProfileFactory.create(external_id="s1", email="s1@example.com", attributes={"a": 1})
    ProfileFactory.create(external_id="s2", email="s2@example.com")
    ProfileFactory.create(external_id="s3", email="s3@example.com")
    text = "external_id,email,plan\nn1,n1@example.com,free\nn2,,pro\ns1,,team\nn3,,free\n"
    text += "s2,new2@example.com,\ns3,,free\nn4,,\nn5,n5@example.com,free\n"
    summary = run_import(text, format="csv", chunk_rows=2)
    assert (summary.created, summary.updated, summary.rejected) == (5, 3, 0)
    profiles = {p.external_id: p for p in Profile.objects.all()}
    assert sorted(profiles) == ["n1", "n2", "n3", "n4", "n5", "s1", "s2", "s3"]
    assert (profiles["s1"].email, profiles["s1"].attributes) == (
        "s1@example.com",
        {"a": 1, "plan": "team"},
    )
    assert profiles["s2"].email == "new2@example.com"
    assert profiles["n5"].attributes == {"plan": "free"}
    assert profiles["n4"].attributes == {}
    # One import, one time, whichever way a chunk went.
    assert len({p.created_at for p in profiles.values() if p.external_id.startswith("n")}) == 1
