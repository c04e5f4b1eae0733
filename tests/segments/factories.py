import factory

from segments.choices import SegmentKind
from segments.models import Profile, Segment


class ProfileFactory(factory.django.DjangoModelFactory[Profile]):
    class Meta:
        model = Profile

    external_id = factory.Sequence(lambda n: f"user-{n:06d}")
    email = factory.LazyAttribute(lambda p: f"{p.external_id}@example.com")
    phone = factory.Sequence(lambda n: f"+3361{n:07d}")
    push_token = factory.LazyAttribute(lambda p: f"push-{p.external_id}")
    locale = "en"
    time_zone = "Europe/Paris"
    attributes = factory.Dict({"country": "FR"})


class SegmentFactory(factory.django.DjangoModelFactory[Segment]):
    class Meta:
        model = Segment

    name = factory.Sequence(lambda n: f"Segment {n}")
    kind = SegmentKind.RULES
    rules = factory.Dict({"all": []})
