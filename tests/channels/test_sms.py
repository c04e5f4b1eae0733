"""SMS length per GSM 03.38: encoding, characters and segments of known texts."""

import pytest

from channels.sms import GSM7, UCS2, sms_segments


@pytest.mark.parametrize(
    ("text", "encoding", "characters", "segments"),
    [
        ("", GSM7, 0, 0),
        ("Hello Ann", GSM7, 9, 1),
        ("a" * 160, GSM7, 160, 1),
        ("a" * 161, GSM7, 161, 2),
        ("a" * 306, GSM7, 306, 2),
        ("a" * 307, GSM7, 307, 3),
        # The extension table counts two septets: 80 euro signs fill one message.
        ("€" * 80, GSM7, 160, 1),
        ("€" * 81, GSM7, 162, 2),
        ("Price: 5€ [x]", GSM7, 16, 1),
        ("{~^|\\}", GSM7, 12, 1),
        # Accented letters of the basic set stay GSM-7.
        ("Café Müller à Genève £5", GSM7, 23, 1),
        ("¿Qué? ¡Olé! Øre ¥6 §1 Δ", GSM7, 23, 1),
        # An escape pair is never split: 152 septets then "€" make a second part start.
        ("a" * 152 + "€" + "a" * 10, GSM7, 164, 2),
        ("a" * 152 + "€" * 2 + "a" * 150, GSM7, 306, 3),
        # A character outside GSM-7 (ç small, ê, a curly quote) makes the text UCS-2.
        ("Garçon", UCS2, 6, 1),
        ("Ñandú", UCS2, 5, 1),
        ("C’est fête", UCS2, 10, 1),
        ("ê" * 70, UCS2, 70, 1),
        ("ê" * 71, UCS2, 71, 2),
        ("ê" * 134, UCS2, 134, 2),
        ("ê" * 135, UCS2, 135, 3),
        ("Привет", UCS2, 6, 1),
        ("你好世界", UCS2, 4, 1),
        # An emoji is a surrogate pair: two UTF-16 code units, never split either.
        ("Hi 👋", UCS2, 5, 1),
        ("😀" * 35, UCS2, 70, 1),
        ("😀" * 36, UCS2, 72, 2),
        ("e" * 66 + "😀" + "e", UCS2, 69, 1),
        ("e" * 66 + "😀" + "e" * 4, UCS2, 72, 2),
    ],
)
def test_sms_length_of_known_texts(text, encoding, characters, segments):
    length = sms_segments(text)
    assert (length.encoding, length.characters, length.segments) == (
        encoding,
        characters,
        segments,
    )


def test_a_surrogate_pair_on_a_part_boundary_starts_the_next_part():
    # 66 units then an emoji (2 units) would straddle parts of 67: it starts part two,
    # which then holds the emoji and 65 more units; one unit more opens a third.
    assert sms_segments("e" * 66 + "😀" + "e" * 65).segments == 2
    assert sms_segments("e" * 66 + "😀" + "e" * 66).segments == 3


def test_as_dict_is_the_shape_the_api_shows():
    assert sms_segments("Hi").as_dict() == {"encoding": "GSM-7", "characters": 2, "segments": 1}
