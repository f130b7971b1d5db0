"""`GET /v1/models`: every name a job may use (route aliases and directly named models)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import PrincipalDep, StateDep
from api.documentation import ModelList, answer

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=None, responses={200: answer(ModelList, "Every model name a job may use.")})
async def list_models(state: StateDep, _principal: PrincipalDep) -> dict[str, Any]:
    data = [{"id": name, "object": "model", "owned_by": "jobgate"} for name in state.config.known_models()]
    return {"object": "list", "data": data}
