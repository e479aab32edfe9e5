"""Recording links: tokens are derived (HMAC over id + link_version), no longer stored. Links already handed out
keep working through the SHA-256 of their token; the plaintext column goes."""

import hashlib

from django.db import migrations, models


def hash_issued_tokens(apps, schema_editor):
    Recording = apps.get_model("calls", "Recording")
    for pk, token in Recording.objects.exclude(token="").values_list("pk", "token").iterator():
        Recording.objects.filter(pk=pk).update(legacy_token_hash=hashlib.sha256(token.encode()).hexdigest())


class Migration(migrations.Migration):
    dependencies = [("calls", "0003_i15_click_to_call_guard")]

    operations = [
        migrations.AddField(
            model_name="recording",
            name="link_version",
            field=models.PositiveIntegerField(default=1, editable=False),
        ),
        migrations.AddField(
            model_name="recording",
            name="legacy_token_hash",
            field=models.CharField(
                blank=True,
                db_index=True,
                editable=False,
                help_text="SHA-256 of a pre-HMAC link",
                max_length=64,
            ),
        ),
        migrations.RunPython(hash_issued_tokens, migrations.RunPython.noop),
        migrations.RemoveField(model_name="recording", name="token"),
    ]
