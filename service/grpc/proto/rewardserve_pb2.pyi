from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TextItem(_message.Message):
    __slots__ = ("prompt", "response", "reference")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    response: str
    reference: str
    def __init__(self, prompt: _Optional[str] = ..., response: _Optional[str] = ..., reference: _Optional[str] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ChatItem(_message.Message):
    __slots__ = ("messages", "reference")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    reference: str
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., reference: _Optional[str] = ...) -> None: ...

class TokensItem(_message.Message):
    __slots__ = ("input_ids", "prompt_length")
    INPUT_IDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    input_ids: _containers.RepeatedScalarFieldContainer[int]
    prompt_length: int
    def __init__(self, input_ids: _Optional[_Iterable[int]] = ..., prompt_length: _Optional[int] = ...) -> None: ...

class StepsItem(_message.Message):
    __slots__ = ("prompt", "steps")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    steps: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, prompt: _Optional[str] = ..., steps: _Optional[_Iterable[str]] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("text", "chat", "tokens", "steps", "ground_truth", "data_source", "extra_info")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GROUND_TRUTH_FIELD_NUMBER: _ClassVar[int]
    DATA_SOURCE_FIELD_NUMBER: _ClassVar[int]
    EXTRA_INFO_FIELD_NUMBER: _ClassVar[int]
    text: TextItem
    chat: ChatItem
    tokens: TokensItem
    steps: StepsItem
    ground_truth: _struct_pb2.Value
    data_source: str
    extra_info: _struct_pb2.Struct
    def __init__(self, text: _Optional[_Union[TextItem, _Mapping]] = ..., chat: _Optional[_Union[ChatItem, _Mapping]] = ..., tokens: _Optional[_Union[TokensItem, _Mapping]] = ..., steps: _Optional[_Union[StepsItem, _Mapping]] = ..., ground_truth: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., data_source: _Optional[str] = ..., extra_info: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("model", "items", "truncate", "aggregate", "priority", "timeout_ms", "request_id", "normalize", "cache", "on_item_error", "deterministic", "adapter", "token_rewards", "pairwise_mode")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    ON_ITEM_ERROR_FIELD_NUMBER: _ClassVar[int]
    DETERMINISTIC_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_REWARDS_FIELD_NUMBER: _ClassVar[int]
    PAIRWISE_MODE_FIELD_NUMBER: _ClassVar[int]
    model: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    truncate: str
    aggregate: str
    priority: str
    timeout_ms: float
    request_id: str
    normalize: str
    cache: str
    on_item_error: str
    deterministic: bool
    adapter: str
    token_rewards: bool
    pairwise_mode: str
    def __init__(self, model: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., truncate: _Optional[str] = ..., aggregate: _Optional[str] = ..., priority: _Optional[str] = ..., timeout_ms: _Optional[float] = ..., request_id: _Optional[str] = ..., normalize: _Optional[str] = ..., cache: _Optional[str] = ..., on_item_error: _Optional[str] = ..., deterministic: _Optional[bool] = ..., adapter: _Optional[str] = ..., token_rewards: _Optional[bool] = ..., pairwise_mode: _Optional[str] = ...) -> None: ...

class ItemResult(_message.Message):
    __slots__ = ("index", "score", "dimensions", "gating_weights", "step_rewards", "num_tokens", "truncated", "cached", "error", "components", "uncertainty", "token_rewards")
    class DimensionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ComponentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ComponentResult
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ComponentResult, _Mapping]] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    GATING_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    STEP_REWARDS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_REWARDS_FIELD_NUMBER: _ClassVar[int]
    index: int
    score: float
    dimensions: _containers.ScalarMap[str, float]
    gating_weights: _containers.RepeatedScalarFieldContainer[float]
    step_rewards: _containers.RepeatedScalarFieldContainer[float]
    num_tokens: int
    truncated: bool
    cached: bool
    error: Error
    components: _containers.MessageMap[str, ComponentResult]
    uncertainty: float
    token_rewards: TokenRewards
    def __init__(self, index: _Optional[int] = ..., score: _Optional[float] = ..., dimensions: _Optional[_Mapping[str, float]] = ..., gating_weights: _Optional[_Iterable[float]] = ..., step_rewards: _Optional[_Iterable[float]] = ..., num_tokens: _Optional[int] = ..., truncated: _Optional[bool] = ..., cached: _Optional[bool] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., components: _Optional[_Mapping[str, ComponentResult]] = ..., uncertainty: _Optional[float] = ..., token_rewards: _Optional[_Union[TokenRewards, _Mapping]] = ...) -> None: ...

class TokenRewards(_message.Message):
    __slots__ = ("start", "token_ids", "values")
    START_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    start: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, start: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class ComponentResult(_message.Message):
    __slots__ = ("value", "status", "message", "spread", "extras")
    class ExtrasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SPREAD_FIELD_NUMBER: _ClassVar[int]
    EXTRAS_FIELD_NUMBER: _ClassVar[int]
    value: float
    status: str
    message: str
    spread: float
    extras: _containers.ScalarMap[str, float]
    def __init__(self, value: _Optional[float] = ..., status: _Optional[str] = ..., message: _Optional[str] = ..., spread: _Optional[float] = ..., extras: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("total_tokens",)
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    total_tokens: int
    def __init__(self, total_tokens: _Optional[int] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("model", "revision", "kind", "results", "usage", "normalized")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    model: str
    revision: str
    kind: str
    results: _containers.RepeatedCompositeFieldContainer[ItemResult]
    usage: Usage
    normalized: bool
    def __init__(self, model: _Optional[str] = ..., revision: _Optional[str] = ..., kind: _Optional[str] = ..., results: _Optional[_Iterable[_Union[ItemResult, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., normalized: _Optional[bool] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("grpc_code", "http_status", "code", "message", "field", "retry_after_s")
    GRPC_CODE_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    grpc_code: int
    http_status: int
    code: str
    message: str
    field: str
    retry_after_s: float
    def __init__(self, grpc_code: _Optional[int] = ..., http_status: _Optional[int] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., field: _Optional[str] = ..., retry_after_s: _Optional[float] = ...) -> None: ...

class ScoreStreamResponse(_message.Message):
    __slots__ = ("request_id", "response", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    response: ScoreResponse
    error: Error
    def __init__(self, request_id: _Optional[str] = ..., response: _Optional[_Union[ScoreResponse, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelCard(_message.Message):
    __slots__ = ("name", "status", "kind", "revision", "max_length", "architecture", "dimensions", "step_aggregate", "device", "dtype", "adapters")
    class AdaptersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    STEP_AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: str
    kind: str
    revision: str
    max_length: int
    architecture: str
    dimensions: _containers.RepeatedScalarFieldContainer[str]
    step_aggregate: str
    device: str
    dtype: str
    adapters: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., status: _Optional[str] = ..., kind: _Optional[str] = ..., revision: _Optional[str] = ..., max_length: _Optional[int] = ..., architecture: _Optional[str] = ..., dimensions: _Optional[_Iterable[str]] = ..., step_aggregate: _Optional[str] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., adapters: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelCard]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelCard, _Mapping]]] = ...) -> None: ...

class StepList(_message.Message):
    __slots__ = ("steps",)
    STEPS_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, steps: _Optional[_Iterable[str]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("text", "steps", "tokens")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    text: str
    steps: StepList
    tokens: TokensItem
    def __init__(self, text: _Optional[str] = ..., steps: _Optional[_Union[StepList, _Mapping]] = ..., tokens: _Optional[_Union[TokensItem, _Mapping]] = ...) -> None: ...

class CompareRequest(_message.Message):
    __slots__ = ("model", "prompt", "messages", "responses", "tie_margin", "truncate", "aggregate", "normalize", "priority", "timeout_ms", "pairwise", "adapter")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    TIE_MARGIN_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    PAIRWISE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    responses: _containers.RepeatedCompositeFieldContainer[Candidate]
    tie_margin: float
    truncate: str
    aggregate: str
    normalize: str
    priority: str
    timeout_ms: float
    pairwise: bool
    adapter: str
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., responses: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., tie_margin: _Optional[float] = ..., truncate: _Optional[str] = ..., aggregate: _Optional[str] = ..., normalize: _Optional[str] = ..., priority: _Optional[str] = ..., timeout_ms: _Optional[float] = ..., pairwise: _Optional[bool] = ..., adapter: _Optional[str] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("winner", "tied")
    WINNER_FIELD_NUMBER: _ClassVar[int]
    TIED_FIELD_NUMBER: _ClassVar[int]
    winner: int
    tied: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, winner: _Optional[int] = ..., tied: _Optional[_Iterable[int]] = ...) -> None: ...

class CompareResult(_message.Message):
    __slots__ = ("index", "score", "win_probability", "dimensions", "gating_weights", "step_rewards", "num_tokens", "truncated")
    class DimensionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    WIN_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    GATING_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    STEP_REWARDS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    index: int
    score: float
    win_probability: float
    dimensions: _containers.ScalarMap[str, float]
    gating_weights: _containers.RepeatedScalarFieldContainer[float]
    step_rewards: _containers.RepeatedScalarFieldContainer[float]
    num_tokens: int
    truncated: bool
    def __init__(self, index: _Optional[int] = ..., score: _Optional[float] = ..., win_probability: _Optional[float] = ..., dimensions: _Optional[_Mapping[str, float]] = ..., gating_weights: _Optional[_Iterable[float]] = ..., step_rewards: _Optional[_Iterable[float]] = ..., num_tokens: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class Row(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class CompareResponse(_message.Message):
    __slots__ = ("model", "revision", "kind", "normalized", "winner", "tied", "dimension_winners", "pairwise", "results", "usage")
    class DimensionWinnersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Verdict
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Verdict, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    WINNER_FIELD_NUMBER: _ClassVar[int]
    TIED_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_WINNERS_FIELD_NUMBER: _ClassVar[int]
    PAIRWISE_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    model: str
    revision: str
    kind: str
    normalized: bool
    winner: int
    tied: _containers.RepeatedScalarFieldContainer[int]
    dimension_winners: _containers.MessageMap[str, Verdict]
    pairwise: _containers.RepeatedCompositeFieldContainer[Row]
    results: _containers.RepeatedCompositeFieldContainer[CompareResult]
    usage: Usage
    def __init__(self, model: _Optional[str] = ..., revision: _Optional[str] = ..., kind: _Optional[str] = ..., normalized: _Optional[bool] = ..., winner: _Optional[int] = ..., tied: _Optional[_Iterable[int]] = ..., dimension_winners: _Optional[_Mapping[str, Verdict]] = ..., pairwise: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., results: _Optional[_Iterable[_Union[CompareResult, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class RerankRequest(_message.Message):
    __slots__ = ("model", "query", "messages", "documents", "top_n", "return_documents", "aggregation", "weights", "truncate", "aggregate", "normalize", "priority", "timeout_ms", "adapter", "schedule", "rounds")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    RETURN_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    query: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    documents: _containers.RepeatedCompositeFieldContainer[Candidate]
    top_n: int
    return_documents: bool
    aggregation: str
    weights: _containers.ScalarMap[str, float]
    truncate: str
    aggregate: str
    normalize: str
    priority: str
    timeout_ms: float
    adapter: str
    schedule: str
    rounds: int
    def __init__(self, model: _Optional[str] = ..., query: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., documents: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., top_n: _Optional[int] = ..., return_documents: _Optional[bool] = ..., aggregation: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ..., truncate: _Optional[str] = ..., aggregate: _Optional[str] = ..., normalize: _Optional[str] = ..., priority: _Optional[str] = ..., timeout_ms: _Optional[float] = ..., adapter: _Optional[str] = ..., schedule: _Optional[str] = ..., rounds: _Optional[int] = ...) -> None: ...

class RerankDocument(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class RerankResult(_message.Message):
    __slots__ = ("index", "relevance_score", "document", "score", "dimensions", "gating_weights", "step_rewards", "pareto_rank", "num_tokens", "truncated")
    class DimensionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RELEVANCE_SCORE_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    GATING_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    STEP_REWARDS_FIELD_NUMBER: _ClassVar[int]
    PARETO_RANK_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    index: int
    relevance_score: float
    document: RerankDocument
    score: float
    dimensions: _containers.ScalarMap[str, float]
    gating_weights: _containers.RepeatedScalarFieldContainer[float]
    step_rewards: _containers.RepeatedScalarFieldContainer[float]
    pareto_rank: int
    num_tokens: int
    truncated: bool
    def __init__(self, index: _Optional[int] = ..., relevance_score: _Optional[float] = ..., document: _Optional[_Union[RerankDocument, _Mapping]] = ..., score: _Optional[float] = ..., dimensions: _Optional[_Mapping[str, float]] = ..., gating_weights: _Optional[_Iterable[float]] = ..., step_rewards: _Optional[_Iterable[float]] = ..., pareto_rank: _Optional[int] = ..., num_tokens: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("id", "model", "revision", "kind", "normalized", "aggregation", "weights", "pareto_front", "results", "usage", "schedule", "comparisons")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    PARETO_FRONT_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    COMPARISONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    revision: str
    kind: str
    normalized: bool
    aggregation: str
    weights: _containers.ScalarMap[str, float]
    pareto_front: _containers.RepeatedScalarFieldContainer[int]
    results: _containers.RepeatedCompositeFieldContainer[RerankResult]
    usage: RerankUsage
    schedule: str
    comparisons: int
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., revision: _Optional[str] = ..., kind: _Optional[str] = ..., normalized: _Optional[bool] = ..., aggregation: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ..., pareto_front: _Optional[_Iterable[int]] = ..., results: _Optional[_Iterable[_Union[RerankResult, _Mapping]]] = ..., usage: _Optional[_Union[RerankUsage, _Mapping]] = ..., schedule: _Optional[str] = ..., comparisons: _Optional[int] = ...) -> None: ...

class RerankUsage(_message.Message):
    __slots__ = ("total_tokens", "prompt_tokens")
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    total_tokens: int
    prompt_tokens: int
    def __init__(self, total_tokens: _Optional[int] = ..., prompt_tokens: _Optional[int] = ...) -> None: ...

class StepsRequest(_message.Message):
    __slots__ = ("model", "items", "threshold", "truncate", "aggregate", "normalize", "priority", "timeout_ms", "adapter")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    model: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    threshold: float
    truncate: str
    aggregate: str
    normalize: str
    priority: str
    timeout_ms: float
    adapter: str
    def __init__(self, model: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., threshold: _Optional[float] = ..., truncate: _Optional[str] = ..., aggregate: _Optional[str] = ..., normalize: _Optional[str] = ..., priority: _Optional[str] = ..., timeout_ms: _Optional[float] = ..., adapter: _Optional[str] = ...) -> None: ...

class StepsResult(_message.Message):
    __slots__ = ("index", "score", "step_rewards", "first_below", "step_offset", "num_tokens", "truncated")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    STEP_REWARDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_BELOW_FIELD_NUMBER: _ClassVar[int]
    STEP_OFFSET_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    index: int
    score: float
    step_rewards: _containers.RepeatedScalarFieldContainer[float]
    first_below: int
    step_offset: int
    num_tokens: int
    truncated: bool
    def __init__(self, index: _Optional[int] = ..., score: _Optional[float] = ..., step_rewards: _Optional[_Iterable[float]] = ..., first_below: _Optional[int] = ..., step_offset: _Optional[int] = ..., num_tokens: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class StepsResponse(_message.Message):
    __slots__ = ("model", "revision", "aggregate", "threshold", "normalized", "results", "usage")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    model: str
    revision: str
    aggregate: str
    threshold: float
    normalized: bool
    results: _containers.RepeatedCompositeFieldContainer[StepsResult]
    usage: Usage
    def __init__(self, model: _Optional[str] = ..., revision: _Optional[str] = ..., aggregate: _Optional[str] = ..., threshold: _Optional[float] = ..., normalized: _Optional[bool] = ..., results: _Optional[_Iterable[_Union[StepsResult, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...
