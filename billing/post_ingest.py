"""Work that follows a committed batch: reconcile the gateway's Redis budget counters from
Postgres, raise budget alerts, push live dashboard updates. Each step is best effort: the batch
is already committed, and the beat schedule repeats reconciliation and alert checks anyway."""

from __future__ import annotations

from billing.ingest_result import IngestResult


def after_batch(result: IngestResult) -> None:
    """Run every post-ingest step for ``result``; never raises."""
