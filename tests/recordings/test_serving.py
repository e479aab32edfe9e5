"""Serving permanent links: GET/HEAD /records/<token> streams from storage with ranges, validators, the
clientId check, the states' answers, a throttle per client address and an audit log."""

from __future__ import annotations

import ipaddress

import pytest
from django.http import StreamingHttpResponse

from calls import views
from calls.models import PlaybackLog, Recording
from tests.factories import CrmConnectionFactory, TenantFactory
from tests.recordings.conftest import MP3, mp3_answer

pytestmark = pytest.mark.django_db

SIZE = len(MP3)
CLIENT_ID = "rc-client-id-5a1d0c"


def url(recording: Recording, query: str = "") -> str:
    return f"/records/{recording.token}" + (f"?{query}" if query else "")


def body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.fixture
def recording(stored_recording):
    return stored_recording()


@pytest.fixture
def retailcrm_like(tenant):
    return CrmConnectionFactory(
        tenant=tenant, provider="clientidcrm", key="rc", settings={}, secrets={"client_id": CLIENT_ID}
    )


# --------------------------------------------------------------------------------------------- whole and ranges


def test_a_stored_mp3_is_streamed_whole_with_its_headers(client, recording):
    response = client.get(url(recording))

    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert body(response) == MP3
    assert response["Content-Type"] == "audio/mpeg"
    assert response["Content-Length"] == str(SIZE)
    assert response["Accept-Ranges"] == "bytes"
    assert response["ETag"].startswith('"') and recording.token[:8] not in response["ETag"]
    assert response["Last-Modified"].endswith("GMT")


def test_the_file_is_read_a_chunk_at_a_time_not_loaded_whole(client, recording):
    response = client.get(url(recording))

    chunks = list(response.streaming_content)
    assert len(chunks) == -(-SIZE // views.CHUNK) > 1
    assert max(len(c) for c in chunks) <= views.CHUNK


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),  # the first bytes (a player probing the file)
        ("bytes=1000-1999", 1000, 1999),  # the middle (seeking)
        ("bytes=-500", SIZE - 500, SIZE - 1),  # a suffix (the last 500 bytes)
        (f"bytes={SIZE - 10}-", SIZE - 10, SIZE - 1),  # from an offset to the end
        (f"bytes=100-{SIZE + 5000}", 100, SIZE - 1),  # past the end: clipped
        (f"bytes=-{SIZE * 2}", 0, SIZE - 1),  # a suffix longer than the file: all of it
    ],
)
def test_a_single_byte_range_gets_206_with_exactly_those_bytes(client, recording, header, start, end):
    response = client.get(url(recording), HTTP_RANGE=header)

    assert response.status_code == 206
    assert body(response) == MP3[start : end + 1]
    assert response["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
    assert response["Content-Length"] == str(end - start + 1)
    assert response["Content-Type"] == "audio/mpeg"


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", f"bytes={SIZE + 1}-{SIZE + 9}", "bytes=-0"])
def test_an_unsatisfiable_range_gets_416_with_the_size(client, recording, header):
    response = client.get(url(recording), HTTP_RANGE=header)

    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{SIZE}"
    assert PlaybackLog.objects.get().status == 416


@pytest.mark.parametrize(
    "header", ["bytes=" + "9" * 5000 + "-", "bytes=0-" + "9" * 5000, "bytes=-" + "9" * 5000]
)
def test_a_range_with_thousands_of_digits_is_416_not_a_500(client, recording, header):
    response = client.get(url(recording), HTTP_RANGE=header)

    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{SIZE}"


@pytest.mark.parametrize("header", ["bytes=500-100", "bytes=0-1,5-9", "items=0-9", "bytes=abc"])
def test_an_invalid_or_multi_part_range_is_ignored_and_the_whole_file_sent(client, recording, header):
    response = client.get(url(recording), HTTP_RANGE=header)

    assert response.status_code == 200 and body(response) == MP3


def test_a_range_for_another_version_of_the_file_gets_the_whole_file(client, recording):
    response = client.get(url(recording), HTTP_RANGE="bytes=0-9", HTTP_IF_RANGE='"some-old-etag"')

    assert response.status_code == 200 and body(response) == MP3


def test_a_range_for_this_version_is_honoured(client, recording):
    etag = client.get(url(recording))["ETag"]

    response = client.get(url(recording), HTTP_RANGE="bytes=0-9", HTTP_IF_RANGE=etag)

    assert response.status_code == 206 and body(response) == MP3[:10]


def test_a_cached_copy_is_revalidated_with_304(client, recording):
    first = client.get(url(recording))

    by_etag = client.get(url(recording), HTTP_IF_NONE_MATCH=first["ETag"])
    by_date = client.get(url(recording), HTTP_IF_MODIFIED_SINCE=first["Last-Modified"])
    changed = client.get(url(recording), HTTP_IF_NONE_MATCH='"another"')

    assert (by_etag.status_code, by_date.status_code, changed.status_code) == (304, 304, 200)
    assert by_etag.content == b"" and by_etag["ETag"] == first["ETag"]


def test_head_gives_the_headers_of_a_get_without_the_body(client, recording):
    response = client.head(url(recording))
    ranged = client.head(url(recording), HTTP_RANGE="bytes=-100")

    assert response.status_code == 200 and response.content == b""
    assert response["Content-Length"] == str(SIZE) and response["Content-Type"] == "audio/mpeg"
    assert response["Accept-Ranges"] == "bytes" and "ETag" in response
    assert ranged.status_code == 206 and ranged["Content-Range"] == f"bytes {SIZE - 100}-{SIZE - 1}/{SIZE}"
    assert ranged["Content-Length"] == "100"


def test_other_methods_are_not_allowed(client, recording):
    assert client.post(url(recording)).status_code == 405


def test_the_stored_content_type_is_served(client, stored_recording):
    wav = stored_recording(b"RIFF" + b"\x00" * 100, content_type="audio/x-wav")

    assert client.get(url(wav))["Content-Type"] == "audio/x-wav"


def test_the_file_is_closed_when_the_response_ends_even_if_nothing_was_read(client, recording, monkeypatch):
    opened = []
    real = views.storage()

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def open(self, name, mode="rb"):
            opened.append(real.open(name, mode))
            return opened[-1]

    monkeypatch.setattr(views, "storage", lambda: Spy())

    response = client.get(url(recording))
    assert not opened[0].closed
    response.close()  # the client went away before the first chunk

    assert opened[0].closed


def test_a_stored_recording_whose_file_vanished_is_404_not_a_crash(client, recording, recordings_storage):
    (recordings_storage / recording.file).unlink()

    response = client.get(url(recording))

    assert response.status_code == 404 and "Retry-After" not in response


# --------------------------------------------------------------------------------------------- clientId


def test_the_right_client_id_is_accepted(client, recording, retailcrm_like):
    response = client.get(url(recording, f"clientId={CLIENT_ID}"))

    assert response.status_code == 200 and body(response) == MP3
    assert PlaybackLog.objects.get().client_id_used


def test_a_wrong_client_id_is_forbidden(client, recording, retailcrm_like):
    response = client.get(url(recording, "clientId=someone-else"))

    assert response.status_code == 403
    assert PlaybackLog.objects.get().status == 403


def test_an_empty_client_id_is_forbidden(client, recording, retailcrm_like):
    assert client.get(url(recording, "clientId=")).status_code == 403


def test_without_client_id_the_link_plays_as_it_is(client, recording, retailcrm_like):
    response = client.get(url(recording))

    assert response.status_code == 200
    assert not PlaybackLog.objects.get().client_id_used


def test_a_client_id_of_another_tenants_crm_is_forbidden(client, recording):
    CrmConnectionFactory(
        tenant=TenantFactory(slug="other"),
        provider="clientidcrm",
        key="rc",
        settings={},
        secrets={"client_id": CLIENT_ID},
    )

    assert client.get(url(recording, f"clientId={CLIENT_ID}")).status_code == 403


def test_a_client_id_of_an_inactive_connection_is_forbidden(client, recording, retailcrm_like):
    retailcrm_like.active = False
    retailcrm_like.save()

    assert client.get(url(recording, f"clientId={CLIENT_ID}")).status_code == 403


def test_a_client_id_is_forbidden_when_no_crm_plays_links_that_way(client, recording, crm):
    assert client.get(url(recording, f"clientId={CLIENT_ID}")).status_code == 403


# --------------------------------------------------------------------------------------------- states


def test_an_unknown_token_is_404_without_retry_after(client, db):
    response = client.get("/records/no-such-token")

    assert response.status_code == 404 and "Retry-After" not in response


def test_an_unavailable_recording_is_404_without_retry_after(client, recording):
    Recording.objects.filter(pk=recording.pk).update(state=Recording.UNAVAILABLE, reason="HTTP 404")

    response = client.get(url(recording))

    assert response.status_code == 404 and "Retry-After" not in response
    assert PlaybackLog.objects.get().status == 404


def test_a_purged_recording_is_410(client, recording):
    Recording.objects.filter(pk=recording.pk).update(state=Recording.PURGED, file="")

    assert client.get(url(recording)).status_code == 410
    assert client.head(url(recording)).status_code == 410


@pytest.fixture
def expected_recording(make_call, pbx):
    def make(record_url: str) -> Recording:
        pbx.settings = {"record_url": record_url}
        pbx.save()
        return Recording.objects.create(call=make_call())

    return make


def test_not_stored_yet_tries_one_fetch_then_answers_404_with_retry_after(
    client, expected_recording, serve, loopback_allowed
):
    server = serve(lambda handler: (404, {}, b"not yet"))
    recording = expected_recording(server.url("/r.mp3"))

    first = client.get(url(recording))
    second = client.get(url(recording))  # soon after: no second synchronous attempt

    for response in (first, second):
        assert response.status_code == 404
        assert response["Retry-After"] == str(views.RETRY_AFTER_SECONDS)
    assert server.seen == ["/r.mp3"]
    recording.refresh_from_db()
    assert recording.state == Recording.EXPECTED, "the outbox job keeps trying"


def test_not_stored_yet_but_ready_at_the_pbx_is_fetched_and_played_at_once(
    client, expected_recording, serve, loopback_allowed
):
    server = serve(lambda handler: mp3_answer())
    recording = expected_recording(server.url("/r.mp3"))

    response = client.get(url(recording), HTTP_RANGE="bytes=0-9")

    assert response.status_code == 206 and body(response) == MP3[:10]
    recording.refresh_from_db()
    assert recording.state == Recording.STORED


def test_the_synchronous_fetch_respects_the_address_guard(client, expected_recording, listener, settings):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    recording = expected_recording(f"http://127.0.0.1:{listener.port}/r.mp3")

    response = client.get(url(recording))

    assert response.status_code == 404
    assert listener.connections() == 0


# --------------------------------------------------------------------------------------------- throttle, audit


def test_requests_beyond_the_rate_get_429_per_client_address(client, recording, settings, monkeypatch):
    settings.RECORDS_THROTTLE = "3/min"
    monkeypatch.setattr(views, "_now", lambda: 1_000_020.0)

    statuses = [client.get(url(recording)).status_code for _ in range(4)]
    other = client.get(url(recording), REMOTE_ADDR="192.0.2.7")

    assert statuses == [200, 200, 200, 429]
    assert other.status_code == 200
    refused = client.get(url(recording))
    assert refused.status_code == 429 and refused["Retry-After"] == "60"


def test_the_throttle_counts_unknown_tokens_too(client, settings, db, monkeypatch):
    settings.RECORDS_THROTTLE = "2/min"
    monkeypatch.setattr(views, "_now", lambda: 1_000_020.0)

    statuses = [client.get(f"/records/guess-{n}").status_code for n in range(3)]

    assert statuses == [404, 404, 429]


def test_the_throttle_window_resets(client, recording, settings, monkeypatch):
    settings.RECORDS_THROTTLE = "2/min"
    clock = [1_000_020.0]
    monkeypatch.setattr(views, "_now", lambda: clock[0])

    early = [client.get(url(recording)).status_code for _ in range(3)]
    clock[0] += 60
    later = [client.get(url(recording)).status_code for _ in range(3)]

    assert early == later == [200, 200, 429]


def test_each_playback_request_is_logged_for_the_tenants_audit(client, recording):
    client.get(url(recording), HTTP_USER_AGENT="Planfix-Player/2.0", REMOTE_ADDR="203.0.113.9")
    client.head(url(recording), HTTP_RANGE="bytes=0-1", REMOTE_ADDR="203.0.113.9")

    logs = list(PlaybackLog.objects.order_by("at", "id"))
    assert [(log.status, log.address) for log in logs] == [(200, "203.0.113.9"), (206, "203.0.113.9")]
    assert logs[0].user_agent == "Planfix-Player/2.0"
    assert all(log.recording_id == recording.pk and log.at for log in logs)


def test_the_synchronous_fetch_gives_up_when_its_time_budget_is_spent(
    client, expected_recording, serve, loopback_allowed, monkeypatch, recordings_storage
):
    from calls import recordings

    monkeypatch.setattr(recordings, "SYNC_FETCH_SECONDS", -1)  # already over budget at the first chunk
    server = serve(lambda handler: mp3_answer())
    recording = expected_recording(server.url("/r.mp3"))

    response = client.get(url(recording))

    assert response.status_code == 404 and "Retry-After" in response
    assert server.seen == ["/r.mp3"]
    assert Recording.objects.get(pk=recording.pk).state == Recording.EXPECTED
    assert list(recordings_storage.rglob("*.mp3")) == []


def test_a_forwarded_for_header_is_ignored_unless_it_comes_from_a_trusted_proxy(client, recording):
    client.get(url(recording), REMOTE_ADDR="198.51.100.4", HTTP_X_FORWARDED_FOR="203.0.113.9")

    assert PlaybackLog.objects.get().address == "198.51.100.4"


@pytest.mark.parametrize(
    ("forwarded_for", "client_address"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("1.2.3.4, 203.0.113.9", "203.0.113.9"),  # the left part is whatever the client sent
        ("203.0.113.9, 10.0.0.7", "203.0.113.9"),  # two proxies of ours
        ("not-an-ip, 203.0.113.9", "203.0.113.9"),
        ("", "10.0.0.5"),
    ],
)
def test_behind_a_trusted_proxy_the_client_is_the_last_untrusted_forwarded_hop(
    client, recording, settings, forwarded_for, client_address
):
    settings.TRUSTED_PROXY_NETWORKS = [ipaddress.ip_network("10.0.0.0/8")]

    client.get(url(recording), REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR=forwarded_for)

    assert PlaybackLog.objects.get().address == client_address


def test_behind_a_trusted_proxy_each_client_has_its_own_throttle(client, recording, settings, monkeypatch):
    settings.TRUSTED_PROXY_NETWORKS = [ipaddress.ip_network("10.0.0.0/8")]
    settings.RECORDS_THROTTLE = "1/min"
    monkeypatch.setattr(views, "_now", lambda: 1_000_020.0)

    def get(forwarded_for):
        return client.get(
            url(recording), REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR=forwarded_for
        ).status_code

    assert [get("203.0.113.9"), get("203.0.113.10"), get("203.0.113.9")] == [200, 200, 429]


def test_a_server_without_a_client_address_still_logs_the_playback(client, recording):
    assert client.get(url(recording), REMOTE_ADDR="").status_code == 200
    assert PlaybackLog.objects.get().address is None
