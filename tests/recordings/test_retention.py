"""Retention: a daily task deletes files older than the tenant's retention_days and marks them purged."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.cache import cache
from django.utils import timezone

from calls import recordings
from calls.models import Recording
from calls.tasks import purge_expired_recordings
from tests.factories import PbxConnectionFactory, TenantFactory
from tests.recordings.conftest import stored_files

pytestmark = pytest.mark.django_db

DAY = dt.timedelta(days=1)


def ago(days: float) -> dt.datetime:
    return timezone.now() - days * DAY


def test_recordings_older_than_the_retention_are_deleted_and_their_links_answer_410(
    client, tenant, stored_recording, recordings_storage
):
    tenant.retention_days = 30
    tenant.save()
    old = stored_recording(started_at=ago(31))
    recent = stored_recording(started_at=ago(29))

    assert recordings.purge_expired() == 1

    old.refresh_from_db()
    recent.refresh_from_db()
    assert old.state == Recording.PURGED and old.file == "" and old.purged_at is not None
    assert recent.state == Recording.STORED
    assert stored_files(recordings_storage) == [recent.file]
    assert client.get(f"/records/{old.token}").status_code == 410
    assert client.get(f"/records/{recent.token}").status_code == 200


def test_a_tenant_without_retention_keeps_recordings_forever(tenant, stored_recording):
    ancient = stored_recording(started_at=ago(3650))

    assert recordings.purge_expired() == 0
    ancient.refresh_from_db()
    assert ancient.state == Recording.STORED


def test_each_tenant_has_its_own_retention(tenant, stored_recording, make_call):
    tenant.retention_days = 7
    tenant.save()
    strict = stored_recording(started_at=ago(10))
    lenient_tenant = TenantFactory(slug="lenient", retention_days=365)
    lenient_pbx = PbxConnectionFactory(tenant=lenient_tenant, provider="linkpbx", settings={}, secrets={})
    lenient = Recording.objects.create(call=make_call(ago(10), connection=lenient_pbx))
    Recording.objects.filter(pk=lenient.pk).update(state=Recording.STORED, file="lenient/x.mp3", size=1)

    assert recordings.purge_expired() == 1
    assert Recording.objects.get(pk=strict.pk).state == Recording.PURGED
    assert Recording.objects.get(pk=lenient.pk).state == Recording.STORED


def test_purging_twice_purges_once(tenant, stored_recording):
    tenant.retention_days = 1
    tenant.save()
    stored_recording(started_at=ago(2))

    assert recordings.purge_expired() == 1
    assert recordings.purge_expired() == 0


def test_a_file_already_missing_is_still_marked_purged(tenant, stored_recording, recordings_storage):
    tenant.retention_days = 1
    tenant.save()
    recording = stored_recording(started_at=ago(2))
    (recordings_storage / recording.file).unlink()

    assert recordings.purge_expired() == 1
    assert Recording.objects.get(pk=recording.pk).state == Recording.PURGED


def test_a_storage_that_fails_to_delete_keeps_the_recording_for_the_next_run(
    tenant, stored_recording, monkeypatch
):
    tenant.retention_days = 1
    tenant.save()
    recording = stored_recording(started_at=ago(2))

    class Unreachable:
        def delete(self, name):
            raise RuntimeError("S3 said 503")  # not an OSError: remote backends raise their own errors

    monkeypatch.setattr(recordings, "storage", Unreachable)

    assert recordings.purge_expired() == 0
    assert Recording.objects.get(pk=recording.pk).state == Recording.STORED


def test_recordings_not_stored_are_left_alone(tenant, make_call):
    tenant.retention_days = 1
    tenant.save()
    unavailable = Recording.objects.create(call=make_call(ago(5)), state=Recording.UNAVAILABLE)

    assert recordings.purge_expired() == 0
    assert Recording.objects.get(pk=unavailable.pk).state == Recording.UNAVAILABLE


def test_the_daily_task_purges_and_a_second_beat_does_no_double_work(tenant, stored_recording):
    tenant.retention_days = 1
    tenant.save()
    recording = stored_recording(started_at=ago(2))

    cache.add("lock:purge_expired_recordings", "1", 60)  # another beat's run is in progress
    assert purge_expired_recordings() is None
    assert Recording.objects.get(pk=recording.pk).state == Recording.STORED

    cache.delete("lock:purge_expired_recordings")
    assert purge_expired_recordings() == 1
    assert Recording.objects.get(pk=recording.pk).state == Recording.PURGED
