from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class StageRequest(_message.Message):
    __slots__ = ("group_id", "stage", "input", "keep", "run_on")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    RUN_ON_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    stage: int
    input: Tensor
    keep: _containers.RepeatedScalarFieldContainer[int]
    run_on: bool
    def __init__(self, group_id: _Optional[str] = ..., stage: _Optional[int] = ..., input: _Optional[_Union[Tensor, _Mapping]] = ..., keep: _Optional[_Iterable[int]] = ..., run_on: _Optional[bool] = ...) -> None: ...

class StageReply(_message.Message):
    __slots__ = ("stage", "pooled", "compute_ms", "group_id", "error", "queue_ms")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    POOLED_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    stage: int
    pooled: Tensor
    compute_ms: float
    group_id: str
    error: str
    queue_ms: float
    def __init__(self, stage: _Optional[int] = ..., pooled: _Optional[_Union[Tensor, _Mapping]] = ..., compute_ms: _Optional[float] = ..., group_id: _Optional[str] = ..., error: _Optional[str] = ..., queue_ms: _Optional[float] = ...) -> None: ...

class StageBatch(_message.Message):
    __slots__ = ("items", "drop", "seq", "handover")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HANDOVER_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[StageRequest]
    drop: _containers.RepeatedScalarFieldContainer[str]
    seq: int
    handover: bool
    def __init__(self, items: _Optional[_Iterable[_Union[StageRequest, _Mapping]]] = ..., drop: _Optional[_Iterable[str]] = ..., seq: _Optional[int] = ..., handover: _Optional[bool] = ...) -> None: ...

class StageBatchReply(_message.Message):
    __slots__ = ("items", "seq")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[StageReply]
    seq: int
    def __init__(self, items: _Optional[_Iterable[_Union[StageReply, _Mapping]]] = ..., seq: _Optional[int] = ...) -> None: ...

class DropRequest(_message.Message):
    __slots__ = ("group_id",)
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    def __init__(self, group_id: _Optional[str] = ...) -> None: ...

class DropReply(_message.Message):
    __slots__ = ("dropped",)
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    dropped: bool
    def __init__(self, dropped: _Optional[bool] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoReply(_message.Message):
    __slots__ = ("branch", "num_stages", "stages_run", "states_dropped", "states_expired", "active_states", "macs_run", "fingerprint", "instance", "backend", "peak_rss_mib")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    NUM_STAGES_FIELD_NUMBER: _ClassVar[int]
    STAGES_RUN_FIELD_NUMBER: _ClassVar[int]
    STATES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    STATES_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_STATES_FIELD_NUMBER: _ClassVar[int]
    MACS_RUN_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_MIB_FIELD_NUMBER: _ClassVar[int]
    branch: int
    num_stages: int
    stages_run: int
    states_dropped: int
    states_expired: int
    active_states: int
    macs_run: int
    fingerprint: str
    instance: str
    backend: str
    peak_rss_mib: float
    def __init__(self, branch: _Optional[int] = ..., num_stages: _Optional[int] = ..., stages_run: _Optional[int] = ..., states_dropped: _Optional[int] = ..., states_expired: _Optional[int] = ..., active_states: _Optional[int] = ..., macs_run: _Optional[int] = ..., fingerprint: _Optional[str] = ..., instance: _Optional[str] = ..., backend: _Optional[str] = ..., peak_rss_mib: _Optional[float] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("images", "deadline_ms")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    deadline_ms: float
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., deadline_ms: _Optional[float] = ...) -> None: ...

class InferResult(_message.Message):
    __slots__ = ("prediction", "probabilities", "exit", "branches", "stage_ms", "stop_reason", "worker_ms", "macs", "group_id", "start")
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    STAGE_MS_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    WORKER_MS_FIELD_NUMBER: _ClassVar[int]
    MACS_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    prediction: int
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    exit: int
    branches: _containers.RepeatedScalarFieldContainer[int]
    stage_ms: _containers.RepeatedScalarFieldContainer[float]
    stop_reason: str
    worker_ms: _containers.RepeatedScalarFieldContainer[float]
    macs: int
    group_id: str
    start: int
    def __init__(self, prediction: _Optional[int] = ..., probabilities: _Optional[_Iterable[float]] = ..., exit: _Optional[int] = ..., branches: _Optional[_Iterable[int]] = ..., stage_ms: _Optional[_Iterable[float]] = ..., stop_reason: _Optional[str] = ..., worker_ms: _Optional[_Iterable[float]] = ..., macs: _Optional[int] = ..., group_id: _Optional[str] = ..., start: _Optional[int] = ...) -> None: ...

class InferReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[InferResult]
    def __init__(self, results: _Optional[_Iterable[_Union[InferResult, _Mapping]]] = ...) -> None: ...

class InferStreamRequest(_message.Message):
    __slots__ = ("id", "request", "cancel")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    id: int
    request: InferRequest
    cancel: bool
    def __init__(self, id: _Optional[int] = ..., request: _Optional[_Union[InferRequest, _Mapping]] = ..., cancel: _Optional[bool] = ...) -> None: ...

class InferStreamReply(_message.Message):
    __slots__ = ("id", "reply", "code", "details")
    ID_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    id: int
    reply: InferReply
    code: int
    details: str
    def __init__(self, id: _Optional[int] = ..., reply: _Optional[_Union[InferReply, _Mapping]] = ..., code: _Optional[int] = ..., details: _Optional[str] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfoReply(_message.Message):
    __slots__ = ("in_channels", "image_size", "classes", "num_exits", "num_branches", "policy", "mode", "exit_macs", "full_macs", "schedule")
    IN_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    NUM_EXITS_FIELD_NUMBER: _ClassVar[int]
    NUM_BRANCHES_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    EXIT_MACS_FIELD_NUMBER: _ClassVar[int]
    FULL_MACS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    in_channels: int
    image_size: int
    classes: _containers.RepeatedScalarFieldContainer[str]
    num_exits: int
    num_branches: int
    policy: str
    mode: str
    exit_macs: _containers.RepeatedScalarFieldContainer[int]
    full_macs: int
    schedule: str
    def __init__(self, in_channels: _Optional[int] = ..., image_size: _Optional[int] = ..., classes: _Optional[_Iterable[str]] = ..., num_exits: _Optional[int] = ..., num_branches: _Optional[int] = ..., policy: _Optional[str] = ..., mode: _Optional[str] = ..., exit_macs: _Optional[_Iterable[int]] = ..., full_macs: _Optional[int] = ..., schedule: _Optional[str] = ...) -> None: ...
