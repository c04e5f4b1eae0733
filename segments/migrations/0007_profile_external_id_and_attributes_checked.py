"""Profiles' external ids and attributes are checked by validators (segments.validators).

Validators live in Python only: no SQL runs (the column's "C" collation from 0006 stays).
Rows stored before keep their values; the delivery engine encodes an id where it goes
into a header.
"""

import segments.validators
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('segments', '0006_profile_one_opt_out_index_external_id_bytewise'),
    ]

    operations = [
        migrations.AlterField(
            model_name='profile',
            name='attributes',
            field=models.JSONField(blank=True, default=dict, validators=[segments.validators.validate_attributes]),
        ),
        migrations.AlterField(
            model_name='profile',
            name='external_id',
            field=models.CharField(max_length=255, validators=[segments.validators.validate_external_id]),
        ),
    ]
