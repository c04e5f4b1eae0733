"""The approval flow's fields, the approve permission, and the default groups.

Marketer, Approver and Viewer are made (or completed, when they exist) with the
permissions of their role; an administrator may add to them. Reversing removes the three
groups.
"""

import campaigns.models
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


from django.contrib.auth.management import create_permissions

# Reading: every campaign page and report, the segments, profiles and presets they name.
VIEWER = [
    "campaigns.view_campaign",
    "campaigns.view_campaignversion",
    "campaigns.view_channelaction",
    "campaigns.view_campaigntransition",
    "segments.view_segment",
    "segments.view_profile",
    "channels.view_messagepreset",
]
# Writing campaigns (and deleting Drafts), asking for approval (change_campaign), sending
# proofs, building segments and keeping profiles (test profiles, imports).
MARKETER = [
    *VIEWER,
    "campaigns.add_campaign",
    "campaigns.change_campaign",
    "campaigns.delete_campaign",
    "campaigns.send_proof",
    "segments.add_segment",
    "segments.change_segment",
    "segments.delete_segment",
    "segments.add_profile",
    "segments.change_profile",
]
# Deciding what reaches the audience: approve or reject, activate, stop, archive.
APPROVER = [*MARKETER, "campaigns.approve_campaign", "campaigns.activate_campaign"]
GROUPS = {"Marketer": MARKETER, "Approver": APPROVER, "Viewer": VIEWER}


def create_groups(apps, schema_editor):
    # On a new database the permissions are created after every migration ran (the
    # post_migrate signal): create those this needs now, as that signal would.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, perms in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        for perm in perms:
            app_label, codename = perm.split(".")
            group.permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=GROUPS).delete()


class Migration(migrations.Migration):

    dependencies = [
        ('campaigns', '0006_proof_sends'),
        ('segments', '0008_profile_is_test'),
        ('channels', '0002_preset_backend_rate_limit'),
        ('auth', '0012_alter_user_first_name_max_length'),
        ('contenttypes', '0002_remove_content_type_name'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='campaign',
            options={'ordering': ['-created_at', '-id'], 'permissions': [('activate_campaign', 'Can activate a campaign'), ('approve_campaign', 'Can approve or reject a campaign version')]},
        ),
        migrations.AddField(
            model_name='campaign',
            name='approval_required',
            field=models.BooleanField(default=campaigns.models.approval_required_by_default, help_text='A version must be approved by someone other than its last editor before it can be activated. New campaigns follow SALVO_APPROVAL_REQUIRED.'),
        ),
        migrations.AddField(
            model_name='campaignversion',
            name='approval_comment',
            field=models.TextField(blank=True),
        ),
        migrations.AddField(
            model_name='campaignversion',
            name='approval_decided_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='campaignversion',
            name='approval_decided_by',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AddField(
            model_name='campaignversion',
            name='approval_requested_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='campaignversion',
            name='approval_requested_by',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AddField(
            model_name='campaignversion',
            name='approval_status',
            field=models.CharField(choices=[('not_requested', 'Not requested'), ('awaiting', 'Awaiting approval'), ('approved', 'Approved'), ('rejected', 'Rejected')], db_index=True, default='not_requested', max_length=16),
        ),
        migrations.AddField(
            model_name='campaignversion',
            name='last_edited_by',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AddConstraint(
            model_name='campaignversion',
            constraint=models.CheckConstraint(condition=models.Q(('approval_status__in', ['not_requested', 'awaiting', 'approved', 'rejected'])), name='campaign_version_approval_status_valid'),
        ),
        migrations.RunPython(create_groups, remove_groups),
    ]
