"""GET /v1/features, /v1/features/search, /v1/features/{index} (`api.features.FeatureService`)."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Depends, Path, Query

from api.errors import bad_request, not_found
from api.features import FeatureService
from api.protocol import FeatureDetail, FeatureList, FeatureMatch, FeatureSearchResult
from api.routes import server
from api.state import ServerState
from steering.concepts import MAX_CONCEPT_CHARS

router = APIRouter()


def _features(st: ServerState) -> FeatureService:
    st.require_ready()
    if st.features is None:
        raise not_found("This server runs without an SAE: there are no features.", None, "sae_not_loaded")
    return st.features


@router.get("/v1/features", response_model=FeatureList, summary="Page through the SAE's features")
async def list_features(offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=500),
                        st: ServerState = Depends(server)) -> FeatureList:
    return await asyncio.to_thread(_features(st).page, offset, limit)


@router.get("/v1/features/search", response_model=FeatureSearchResult,
            summary="Features by catalogue label, by activation on the text q, and for q as a concept")
async def search_features(
    q: str = Query(min_length=1, max_length=2000),
    limit: int = Query(10, ge=1, le=100),
    mode: Literal["all", "label", "activation", "concept"] = Query(
        "all", description="Which matches: `label` (catalogue labels), `activation` (most active on q), "
        f"`concept` (q as a concept of at most {MAX_CONCEPT_CHARS} characters: specificity x logit effect), "
        "or `all` (each kind up to `limit`, in that order; concept matches only for a short, non-blank q)."),
    st: ServerState = Depends(server),
) -> FeatureSearchResult:
    fs = _features(st)
    concept_ok = bool(q.strip()) and len(q) <= MAX_CONCEPT_CHARS
    if mode == "concept" and not concept_ok:
        raise bad_request(f"A concept search needs a non-blank q of at most {MAX_CONCEPT_CHARS} characters.", "q")
    want_activation = mode in ("all", "activation")
    want_concept = mode == "concept" or (mode == "all" and concept_ok)
    # Label matches also join the concept search's pool of candidates.
    by_label = await asyncio.to_thread(fs.label_matches, q, limit) if mode != "activation" else []

    def forwards() -> list[FeatureMatch]:
        out = fs.activation_matches(q, limit) if want_activation else []
        if want_concept:
            out += fs.concept_matches(q, limit, extra=[m.index for m in by_label])
        return out

    by_model = await st.run_alone(forwards) if want_activation or want_concept else []
    return FeatureSearchResult(query=q, data=(by_label if mode in ("all", "label") else []) + by_model)


@router.get("/v1/features/{index}", response_model=FeatureDetail, summary="One feature in detail")
async def get_feature(index: int = Path(ge=0), st: ServerState = Depends(server)) -> FeatureDetail:
    fs = _features(st)
    if index >= fs.total:
        raise not_found(f"Feature {index} does not exist: this SAE has {fs.total} features (0..{fs.total - 1}).",
                        "index", "feature_not_found")
    # Without a catalogue, detail multiplies by the unembedding: torch work, on the compute thread.
    return await st.compute.arun(fs.detail, index)
