"""GET /api/v1/calls/ and /api/v1/calls/<id>/: a tenant's call history for reporting tools."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import serializers, viewsets
from rest_framework.filters import OrderingFilter
from rest_framework.pagination import CursorPagination
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer

from api.auth import ApiKeyAuthentication, ApiKeyThrottle
from api.filters import CallFilter
from api.serializers import CallDetailSerializer, CallSerializer
from calls.models import Call


class CallCursorPagination(CursorPagination):
    """Stable pages while calls keep arriving: a cursor, not a page number, marks where the next page starts."""

    ordering = "-started_at"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class ApiView:
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [IsAuthenticated]
    throttle_classes = [ApiKeyThrottle]
    renderer_classes = [JSONRenderer]


DETAIL_ERROR = inline_serializer("Error", {"detail": serializers.CharField()})
FIELD_ERRORS = OpenApiResponse(
    {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    description="A filter value that does not parse: {parameter: [messages]}.",
)
ERRORS = {
    401: OpenApiResponse(DETAIL_ERROR, description="No key, a wrong key or a revoked one."),
    429: OpenApiResponse(DETAIL_ERROR, description="Over API_THROTTLE for this key; see Retry-After."),
}


@extend_schema_view(
    list=extend_schema(
        summary="List calls",
        parameters=[
            OpenApiParameter(
                "ordering", str, enum=["started_at", "-started_at"], description="Default -started_at."
            )
        ],
        responses={
            200: CallSerializer(many=True),
            400: FIELD_ERRORS,
            404: OpenApiResponse(DETAIL_ERROR, description="A cursor that is not one the API gave out."),
            **ERRORS,
        },
    ),
    retrieve=extend_schema(
        summary="One call with its events and CRM deliveries",
        parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH)],
        responses={
            200: CallDetailSerializer,
            404: OpenApiResponse(DETAIL_ERROR, description="No such call in this key's tenant."),
            **ERRORS,
        },
    ),
)
class CallViewSet(ApiView, viewsets.ReadOnlyModelViewSet):
    pagination_class = CallCursorPagination
    filter_backends = [DjangoFilterBackend, OrderingFilter]
    filterset_class = CallFilter
    ordering_fields = ["started_at"]
    ordering = ["-started_at"]
    queryset = Call.objects.none()  # the schema generator's model; requests use get_queryset()

    def get_queryset(self) -> QuerySet[Call]:
        if getattr(self, "swagger_fake_view", False):
            return Call.objects.none()
        # A key reads its own tenant only: another tenant's call id is simply not in this queryset (404).
        # Cursor pagination needs a value to stand on; every stored call has its first event's time.
        return (
            Call.objects.filter(tenant=self.request.user.tenant, started_at__isnull=False)
            .select_related("tenant", "recording")
            .order_by("-started_at", "-id")
        )

    def get_serializer_class(self) -> type:
        return CallDetailSerializer if self.action == "retrieve" else CallSerializer

    def get_serializer_context(self) -> dict[str, Any]:
        context = super().get_serializer_context()
        if getattr(self.request, "user", None) is not None and hasattr(self.request.user, "tenant"):
            context["tz"] = self.request.user.tenant.tz
        return context
