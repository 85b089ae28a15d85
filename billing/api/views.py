"""The usage API: an organisation's usage over a range, from the hourly rollups, as JSON or CSV
(``docs/usage-api.md``). Every role reads it (``READ``, like keys and limits); outsiders get 404
through ``OrganizationAccess``, the one scoping mechanism."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from typing import Any

from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from billing import selectors
from billing.api import serializers as s
from billing.models import UsageRollup
from tenants.api.scoping import OrganizationScopedViewSet
from tenants.models import Organization
from tenants.roles import READ
from vlinders import csv_export

# A JSON report with more rows than this is refused (narrow the range, or use the CSV export).
MAX_JSON_ROWS = 10_000
CSV_METRICS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens")


class UsageViewSet(OrganizationScopedViewSet):
    """Usage of an organisation over a range, per UTC day or hour, optionally per key and model."""

    queryset = UsageRollup.objects.none()
    serializer_class = s.UsageReportSerializer
    pagination_class = None
    renderer_classes = [JSONRenderer]
    content_negotiation_class = csv_export.JSONAlways
    action_roles = {"report": READ, "export": READ}

    def scoped_queryset(self, organization: Organization) -> QuerySet[UsageRollup]:
        return UsageRollup.objects.filter(organization=organization)

    def _query(self, serializer: type[s.UsageQuerySerializer]) -> dict[str, Any]:
        query = serializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        return dict(query.validated_data)

    def _rows(self, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
        names = selectors.key_names(self.organization) if "key" in query["group_by"] else {}
        for row in selectors.usage_rows(
            organization=self.organization,
            start=query["from"],
            end=query["to"],
            granularity=query["granularity"],
            group_by=query["group_by"],
        ):
            row["api_key_name"] = names.get(row["api_key_id"])
            yield row

    @extend_schema(
        parameters=[s.UsageQueryWithFormatSerializer],
        responses={
            (200, "application/json"): s.UsageReportSerializer,
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="With ?format=csv"),
        },
    )
    def report(self, request: Request, org_slug: str) -> Response | StreamingHttpResponse:
        """Usage per bucket with totals. Buckets without usage are left out."""
        query = self._query(s.UsageQueryWithFormatSerializer)
        if query["format"] == "csv":
            return self._csv(query)
        rows: list[dict[str, Any]] = []
        for row in self._rows(query):
            rows.append(row)
            if len(rows) > MAX_JSON_ROWS:
                return Response(
                    {
                        "detail": f"More than {MAX_JSON_ROWS} rows: narrow the range, group by "
                        "less, use granularity=day, or export as CSV (usage.csv)."
                    },
                    status=400,
                )
        report = {
            "organization": self.organization.slug,
            "from": query["from"],
            "to": query["to"],
            "granularity": query["granularity"],
            "group_by": query["group_by"],
            "rows": rows,
            "totals": selectors.usage_totals(
                organization=self.organization, start=query["from"], end=query["to"]
            ),
        }
        return Response(s.UsageReportSerializer(report).data)

    @extend_schema(
        operation_id="orgs_usage_csv",
        parameters=[s.UsageQuerySerializer],
        responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="CSV rows")},
    )
    def export(self, request: Request, org_slug: str) -> StreamingHttpResponse:
        """The same rows as CSV (streamed, no row limit), one line per bucket and dimension."""
        return self._csv(self._query(s.UsageQuerySerializer))

    def _csv(self, query: dict[str, Any]) -> StreamingHttpResponse:
        by_key, by_model = "key" in query["group_by"], "model" in query["group_by"]
        header = ["start"]
        header += ["api_key", "api_key_name"] if by_key else []
        header += ["model"] if by_model else []
        header += [*CSV_METRICS, "total_tokens", "cost"]

        def lines(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
            writer = csv.writer(csv_export.Echo())
            yield writer.writerow(header)
            for row in rows:
                cells: list[Any] = [row["start"].isoformat().replace("+00:00", "Z")]
                if by_key:
                    cells += [row["api_key_id"], row["api_key_name"] or ""]
                if by_model:
                    cells.append(row["model"])
                cells += [row[m] for m in CSV_METRICS]
                cells += [row["total_tokens"], row["cost"]]
                yield writer.writerow([csv_export.cell(c) for c in cells])

        start, end = query["from"], query["to"]
        filename = f"usage-{self.organization.slug}-{start:%Y%m%dT%H}-{end:%Y%m%dT%H}.csv"
        response = StreamingHttpResponse(
            lines(self._rows(query)), content_type="text/csv; charset=utf-8"
        )
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response
