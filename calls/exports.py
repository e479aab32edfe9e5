"""The call list as CSV or XLSX: exactly the rows the admin's filtered list shows (every filter and the search),
times in each call's tenant zone, phone numbers as text.

CSV is streamed row by row. XLSX is written by openpyxl's write-only workbook (constant memory) into a
temporary file, which is then streamed: the format is a zip archive, so it cannot be produced as it is sent.
"""

from __future__ import annotations

import csv
import tempfile
import zoneinfo
from collections.abc import Iterator
from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse, StreamingHttpResponse
from django.utils import timezone
from django.utils.translation import gettext as _

from calls.models import Call

CHUNK = 2000


def columns() -> list[str]:
    return [
        _("Started"),
        _("Time zone"),
        _("Tenant"),
        _("Direction"),
        _("Client phone"),
        _("External phone"),
        _("Extension"),
        _("Result"),
        _("Wait, s"),
        _("Talk, s"),
        _("Recording"),
        _("PBX call id"),
    ]


def rows(queryset: QuerySet[Call]) -> Iterator[list[Any]]:
    zones: dict[str, zoneinfo.ZoneInfo] = {}
    calls = queryset.select_related("tenant", "recording").order_by("-started_at", "-id")
    for call in calls.iterator(chunk_size=CHUNK):
        name = call.tenant.time_zone
        zone = zones.setdefault(name, zoneinfo.ZoneInfo(name))
        started = (
            timezone.localtime(call.started_at, zone).strftime("%Y-%m-%d %H:%M:%S") if call.started_at else ""
        )
        recording = getattr(call, "recording", None)
        yield [
            started,
            name,
            call.tenant.slug,
            str(call.get_direction_display()),
            call.client_phone or call.client_phone_raw,
            call.external_phone,
            call.last_answered_extension or call.initiating_extension or (call.rang_extensions or [""])[0],
            str(call.get_result_display()),
            call.wait_seconds if call.wait_seconds is not None else "",
            call.talk_seconds if call.talk_seconds is not None else "",
            str(recording.get_state_display()) if recording else "",
            call.provider_call_id,
        ]


class _Echo:
    def write(self, value: str) -> str:
        return value


def csv_response(queryset: QuerySet[Call], filename: str) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())

    def lines() -> Iterator[str]:
        yield "\ufeff"  # a BOM, so Excel reads the file as UTF-8 (Cyrillic names)
        yield writer.writerow(columns())
        for row in rows(queryset):
            yield writer.writerow(row)

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}.csv"'
    return response


PHONE_COLUMNS = (4, 5, 6)  # client phone, external phone, extension: text, never numbers


def xlsx_response(queryset: QuerySet[Call], filename: str) -> FileResponse:
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(_("Calls"))
    sheet.append(columns())
    for row in rows(queryset):
        cells = []
        for index, value in enumerate(row):
            cell = WriteOnlyCell(sheet, value=value)
            if index in PHONE_COLUMNS:
                cell.data_type = "s"
                cell.number_format = "@"
            cells.append(cell)
        sheet.append(cells)
    spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115 - FileResponse closes it
    workbook.save(spool)
    spool.seek(0)
    return FileResponse(
        spool,
        as_attachment=True,
        filename=f"{filename}.xlsx",
        content_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    )
