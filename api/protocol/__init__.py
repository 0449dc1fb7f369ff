"""Every schema of the HTTP API, one module per resource (as vLLM keeps a protocol module per endpoint).

    chat       POST /v1/chat/completions: request, response, chunks, the `steering` extension and its report
    messages   the messages of a chat (a union by role), shared by chat and inspect
    models     GET /v1/models, /ready: model cards and the loaded SAE
    presets    GET /v1/presets: the wire form of the library's presets
    features   GET /v1/features...: summaries, details, search matches
    inspect    POST /v1/inspect, POST /v1/features/contrast: per-token features, contrast
    readings   per-token features and monitor events (shared by inspect and chat)
    common     bounds and clamp field types built from the library's constants; the error shape

Extensions to OpenAI's shapes are marked `# ---- extension` where they sit.
This package only describes shapes; `api.translate` turns a request into
engine objects, and nothing below that line sees these models.
"""

from api.protocol.messages import MESSAGE_ROLES, AssistantMessage, ChatMessage, TextContentPart
from api.protocol.chat import (
    AppliedFeature,
    AppliedSteering,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    ConceptProbe,
    ConceptSteering,
    DeltaMessage,
    ResponseMessage,
    SteeringFeature,
    SteeringOptions,
    StreamOptions,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from api.protocol.common import ErrorInfo, ErrorResponse
from api.protocol.features import (
    ConceptScores,
    FeatureDetail,
    FeatureList,
    FeatureMatch,
    FeatureSearchResult,
    FeatureSummary,
    Neighbour,
    TokenEffect,
    TopContext,
)
from api.protocol.inspect import (
    ContrastFeatureOut,
    ContrastRequest,
    ContrastResponse,
    FeatureTotalOut,
    InspectRequest,
    InspectResponse,
)
from api.protocol.models import ModelCard, ModelList, Readiness, SAEInfo
from api.protocol.presets import Preset, PresetFeature, PresetInfo, PresetList
from api.protocol.readings import FeatureActivation, InspectOptions, MonitorEventOut, MonitorOptions, TokenFeatures

__all__ = [
    "AppliedFeature", "AppliedSteering", "ChatCompletion", "ChatCompletionChunk", "ChatCompletionRequest",
    "AssistantMessage", "ChatMessage", "MESSAGE_ROLES", "Choice", "ChoiceLogprobs", "ChunkChoice", "ConceptProbe",
    "ConceptSteering", "DeltaMessage",
    "ResponseMessage", "SteeringFeature", "SteeringOptions", "StreamOptions", "TextContentPart", "TokenLogprob",
    "TopLogprob", "Usage", "ErrorInfo", "ErrorResponse", "ConceptScores", "FeatureDetail", "FeatureList",
    "FeatureMatch", "FeatureSearchResult", "FeatureSummary", "Neighbour", "TokenEffect", "TopContext", "ModelCard",
    "ModelList", "Readiness", "SAEInfo", "Preset", "PresetFeature", "PresetInfo", "PresetList", "ContrastFeatureOut",
    "ContrastRequest", "ContrastResponse", "FeatureActivation", "FeatureTotalOut", "InspectOptions", "InspectRequest",
    "InspectResponse", "TokenFeatures", "MonitorEventOut", "MonitorOptions",
]
