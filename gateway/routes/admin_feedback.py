"""`POST /admin/feedback`: reviewers' and judges' judgements of answers (role reviewer or above).

The same judgement as /v1/feedback (a preference on a pair is the case that matters), with who
judged: source `reviewer` or `judge`, the reviewer's name, the queue and the time spent. Ids
are verified with the signer like any feedback, but any app's answers may be judged: the event
names the answer's app. It is recorded through the same path (Recorder.feedback_received), so
experiment counts and the shadow gate count it.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import Field

from gateway.auth import AdminPrincipal
from gateway.deps import RuntimeDep
from gateway.routes.admin_flags import require_role
from gateway.routes.feedback import FeedbackIn, FeedbackOut, Judge, record_feedback

ReviewerDep = Annotated[AdminPrincipal, Depends(require_role("reviewer"))]


class AdminFeedbackIn(FeedbackIn):
    """A judgement by a reviewer or a judge model."""

    source: Literal["reviewer", "judge"] = "reviewer"
    reviewer: str | None = Field(
        None, min_length=1, max_length=256, description="Who judged; the token's name if absent"
    )
    queue: str | None = Field(None, min_length=1, max_length=256)
    time_spent_ms: int | None = Field(None, ge=0, le=86_400_000)


def admin_feedback_router() -> APIRouter:
    """The `/admin/feedback` route."""
    router = APIRouter(prefix="/admin/feedback", tags=["admin"])

    @router.post("", response_model=FeedbackOut)
    async def post_admin_feedback(
        item: AdminFeedbackIn, rt: RuntimeDep, who: ReviewerDep
    ) -> FeedbackOut:
        """Record a reviewer's or judge's judgement; returns what was recorded."""
        judge = Judge(
            source=item.source,
            name=item.reviewer or who.name,
            queue=item.queue,
            time_spent_ms=item.time_spent_ms,
        )
        return await record_feedback(rt, item, None, "full", time.time(), judge)

    return router
