"""GET /v1/presets, /v1/presets/{name}: the presets the server read at start-up (`steering.presets`)."""

from __future__ import annotations

import dataclasses
import json

from fastapi import APIRouter, Depends

from api.errors import not_found
from api.protocol import MonitorOptions, PresetFeature, PresetInfo, PresetList
from api.routes import server
from api.state import ServerState
from steering.presets import PresetEntry

router = APIRouter()


def preset_info(entry: PresetEntry) -> PresetInfo:
    """A library preset in its wire form."""
    p = entry.preset
    fields = {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name not in ("features", "monitors", "path")}
    return PresetInfo(**fields, features=[PresetFeature(**dataclasses.asdict(f)) for f in p.features],
                      # Through JSON: a steer monitor's clamps are a tuple of dicts, the wire type a (strict) list.
                      monitors=[MonitorOptions(**json.loads(json.dumps(dataclasses.asdict(m)))) for m in p.monitors],
                      available=entry.available, unavailable_reason=entry.reason)


@router.get("/v1/presets", response_model=PresetList)
async def list_presets(st: ServerState = Depends(server)) -> PresetList:
    st.require_ready()
    return PresetList(data=[preset_info(e) for e in st.presets.all()])


@router.get("/v1/presets/{name}", response_model=PresetInfo)
async def get_preset(name: str, st: ServerState = Depends(server)) -> PresetInfo:
    st.require_ready()
    entry = st.presets.get(name)
    if entry is None:
        raise not_found(f"Unknown preset {name!r} (GET /v1/presets lists them).", "name", "preset_not_found")
    return preset_info(entry)
