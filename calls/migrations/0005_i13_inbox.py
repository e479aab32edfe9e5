"""The inbox: a webhook stores its events and answers; the inbox processor applies them (docs/pipeline.md).

Events stored before this migration were applied when they arrived: they are marked done and keep their call.
"""

import django.db.models.deletion
from django.db import migrations, models


def mark_applied(apps, schema_editor):
    CallEvent = apps.get_model("calls", "CallEvent")
    Call = apps.get_model("calls", "Call")
    CallEvent.objects.update(
        status="done",
        processed_at=models.F("received_at"),
        provider_call_id=models.Subquery(
            Call.objects.filter(pk=models.OuterRef("call_id")).values("provider_call_id")[:1]
        ),
    )


class Migration(migrations.Migration):
    dependencies = [
        ("calls", "0004_i15_recording_link_tokens"),
        ("integrations", "0006_merge_20261203_0210"),
    ]

    operations = [
        migrations.AddField(
            model_name="callevent",
            name="attempts",
            field=models.PositiveSmallIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="callevent",
            name="last_error",
            field=models.TextField(blank=True),
        ),
        migrations.AddField(
            model_name="callevent",
            name="next_attempt_at",
            field=models.DateTimeField(blank=True, help_text="Empty: as soon as possible", null=True),
        ),
        migrations.AddField(
            model_name="callevent",
            name="processed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="callevent",
            name="provider_call_id",
            field=models.CharField(default="", max_length=200),
        ),
        migrations.AddField(
            model_name="callevent",
            name="status",
            field=models.CharField(
                choices=[
                    ("pending", "waiting to be applied"),
                    ("done", "applied"),
                    ("failed", "failed, skipped"),
                ],
                default="pending",
                max_length=8,
            ),
        ),
        migrations.AlterField(
            model_name="callevent",
            name="call",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="events",
                to="calls.call",
            ),
        ),
        migrations.AddIndex(
            model_name="callevent",
            index=models.Index(
                condition=models.Q(("status", "pending")),
                fields=["received_at"],
                name="callevent_pending_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="callevent",
            index=models.Index(
                fields=["pbx_connection", "provider_call_id"], name="callevent_provider_call_idx"
            ),
        ),
        migrations.RunPython(mark_applied, migrations.RunPython.noop),
    ]
