"""GET /v1/models, /v1/models/{id}, /ready."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class SAEInfo(BaseModel):
    """The loaded SAE (extension)."""

    id: str = Field(description="The SAE id presets name (`none` without an SAE).")
    note: str | None = Field(None, description="Why the SAE is a placeholder or absent, when it is.")
    catalogue: bool = Field(description="Whether a feature catalogue (labels, contexts) ships with it.")
    d_sae: int | None = None
    architecture: str | None = None
    hook_layer: int | None = None
    hook_site: str | None = None
    max_unit: str | None = Field(None, description="Where the `max` unit's scale comes from: `sae` (the SAE's own "
                                 "statistics) or the estimate this server measured on sample text.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sae-steering"
    # ---- extension: which SAE steers this model -----------------------------
    sae: SAEInfo | None = Field(None, description="The loaded SAE (extension).")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    model: str
    sae: SAEInfo | None
    presets: int = Field(description="Preset files loaded (available or not).")
