"""`/admin/whoami`: the name and role behind an admin token (the console signs in with it)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from gateway.auth import AdminPrincipal
from gateway.routes.admin_flags import require_role


def admin_whoami_router() -> APIRouter:
    """The `/admin/whoami` route."""
    router = APIRouter(prefix="/admin", tags=["admin"])

    @router.get("/whoami")
    async def whoami(
        who: Annotated[AdminPrincipal, Depends(require_role("viewer"))],
    ) -> dict[str, Any]:
        """Who this token is and what role it has."""
        return {"object": "admin.principal", "name": who.name, "role": who.role}

    return router
