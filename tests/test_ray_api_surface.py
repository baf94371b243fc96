"""Ray's public names that need no cluster: ID classes, exception classes, @rj.method's
forms, ray.util's serialization and logging helpers, joblib under Ray's names."""

from __future__ import annotations

import io
import pickle
import re
import threading

import pytest

import rayjupyter as rj
from rayjupyter import exceptions
from rayjupyter.util import (
    deregister_serializer,
    disable_log_once_globally,
    inspect_serializability,
    log_once,
    register_serializer,
)

# Every error class of ray.exceptions (Ray 2.60), with the base classes Ray gives it.
RAY_ERRORS = {
    "ActorAlreadyExistsError": (ValueError,),
    "ActorDiedError": (exceptions.RayActorError,),
    "ActorHandleNotFoundError": (ValueError,),
    "ActorPlacementGroupRemoved": (),
    "ActorUnavailableError": (exceptions.RayActorError,),
    "ActorUnschedulableError": (),
    "AsyncioActorExit": (),
    "AuthenticationError": (),
    "CrossLanguageError": (),
    "GetTimeoutError": (TimeoutError,),
    "LocalRayletDiedError": (),
    "NodeDiedError": (),
    "ObjectFetchTimedOutError": (exceptions.ObjectLostError,),
    "ObjectFreedError": (exceptions.ObjectLostError,),
    "ObjectLostError": (),
    "ObjectReconstructionFailedError": (exceptions.ObjectLostError,),
    "ObjectRefStreamEndOfStreamError": (),
    "ObjectStoreFullError": (),
    "OufOfBandObjectRefSerializationException": (),
    "OutOfDiskError": (),
    "OutOfMemoryError": (),
    "OwnerDiedError": (exceptions.ObjectLostError,),
    "PendingCallsLimitExceeded": (),
    "PlasmaObjectNotAvailable": (),
    "RayActorError": (),
    "RayCgraphCapacityExceeded": (exceptions.RaySystemError,),
    "RayChannelError": (exceptions.RaySystemError,),
    "RayChannelTimeoutError": (exceptions.RaySystemError, TimeoutError),
    "RayDirectTransportError": (exceptions.RaySystemError,),
    "RayError": (),
    "RaySystemError": (),
    "RayTaskError": (),
    "ReferenceCountingAssertionError": (exceptions.ObjectLostError, AssertionError),
    "RpcError": (),
    "RuntimeEnvSetupError": (),
    "StreamingGeneratorReplayInconsistentError": (exceptions.RaySystemError,),
    "TaskCancelledError": (),
    "TaskPlacementGroupRemoved": (),
    "TaskUnschedulableError": (),
    "UnserializableException": (),
    "UserCodeException": (),
    "WorkerCrashedError": (),
}


@pytest.mark.parametrize("name", sorted(RAY_ERRORS))
def test_every_ray_exception_class_exists_with_rays_bases(name):
    cls = getattr(exceptions, name)
    assert issubclass(cls, exceptions.RayError)
    for base in RAY_ERRORS[name]:
        assert issubclass(cls, base), (name, base)
    assert name in exceptions.__all__
    if name != "RayTaskError":  # (made from a remote error, not a message)
        error = pickle.loads(pickle.dumps(cls("why")))
        assert type(error) is cls and "why" in str(error)


ID_CLASSES = [
    rj.ActorClassID,
    rj.ActorID,
    rj.ClusterID,
    rj.FunctionID,
    rj.JobID,
    rj.NodeID,
    rj.PlacementGroupID,
    rj.TaskID,
    rj.UniqueID,
    rj.WorkerID,
]


@pytest.mark.parametrize("cls", ID_CLASSES, ids=lambda c: c.__name__)
def test_id_classes_behave_like_rays(cls):
    one = cls.from_random()
    assert len(one.binary()) == cls.size()
    assert cls.from_hex(one.hex()) == one
    assert cls.from_binary(one.binary()) == one
    assert hash(cls.from_hex(one.hex())) == hash(one)
    assert pickle.loads(pickle.dumps(one)) == one
    assert cls.nil().is_nil() and not one.is_nil()
    assert one != cls.from_random()
    assert repr(one) == f"{cls.__name__}({one.hex()})"
    with pytest.raises(TypeError):
        cls("not bytes")


def test_object_id_is_rays_alias_of_object_ref():
    assert rj.ObjectID is rj.ObjectRef
    assert rj.ObjectRef[int] is not None  # ObjectRef[T] in annotations


def test_method_bare_and_with_options():
    @rj.method
    def plain(self):
        return 1

    assert plain(None) == 1

    @rj.method(num_returns=2, concurrency_group="io")
    def two(self):
        return 1, 2

    assert two.__rayjupyter_num_returns__ == 2
    assert two.__rayjupyter_concurrency_group__ == "io"
    with pytest.raises(TypeError, match="max_task_retries"):
        rj.method(max_task_retries=3)
    with pytest.raises(TypeError, match="keyword options"):
        rj.method(1, 2)


def test_concurrency_groups_are_checked_at_class_definition():
    class Worker:
        @rj.method(concurrency_group="io")
        def read(self):
            return 1

    with pytest.raises(ValueError, match="concurrency group 'io'"):
        rj.remote(Worker)
    actor_class = rj.remote(concurrency_groups={"io": 2})(Worker)
    with pytest.raises(ValueError, match=re.escape("not supported in '.options()'")):
        actor_class.options(concurrency_groups={"io": 3})
    with pytest.raises(ValueError):
        rj.remote(concurrency_groups={"io": 0})(Worker)
    with pytest.raises(TypeError):
        rj.remote(concurrency_groups=["io"])(Worker)


class _Point:
    def __init__(self, x):
        self.x = x


def test_register_serializer_applies_until_deregistered():
    from rayjupyter.core import serialization

    def as_tuple(point):
        return ("point", point.x)

    def from_tuple(data):
        return {"rebuilt": data}

    register_serializer(_Point, serializer=as_tuple, deserializer=from_tuple)
    try:
        value = serialization.deserialize(serialization.serialize(_Point(3)).to_bytes())
        assert value == {"rebuilt": ("point", 3)}
    finally:
        deregister_serializer(_Point)
    value = serialization.deserialize(serialization.serialize(_Point(3)).to_bytes())
    assert isinstance(value, _Point) and value.x == 3
    with pytest.raises(TypeError):
        register_serializer("not a class", serializer=as_tuple, deserializer=from_tuple)


def test_inspect_serializability_names_the_unpicklable_member():
    lock = threading.Lock()

    def uses_lock():
        with lock:
            return 1

    out = io.StringIO()
    ok, failures = inspect_serializability(uses_lock, name="uses_lock", print_file=out)
    assert not ok
    assert [f.name for f in failures] == ["lock"]
    assert "FAILED" in out.getvalue()
    ok, failures = inspect_serializability([1, "two"], print_file=out)
    assert ok and failures == set()


def test_log_once():
    assert log_once("compat-key") is True
    assert log_once("compat-key") is False
    from rayjupyter.util import debug

    try:
        disable_log_once_globally()
        assert log_once("another-key") is False
    finally:
        debug._disabled = False


def test_joblib_backend_under_rays_names():
    joblib = pytest.importorskip("joblib")
    from joblib.parallel import BACKENDS

    from rayjupyter.util.joblib import register_ray

    register_ray()
    assert "ray" in BACKENDS and "rayjupyter" in BACKENDS
    assert BACKENDS["ray"] is BACKENDS["rayjupyter"]
    assert joblib is not None


# Ray 2.60's public names, module by module (``__all__``, or ``dir()`` less imports).
RAY_NAMES = {
    "rayjupyter": """ActorClassID ActorID ClientBuilder DynamicObjectRefGenerator FunctionID JobID
        Language LoggingConfig NodeID ObjectID ObjectRef ObjectRefGenerator PlacementGroupID
        SCRIPT_MODE TaskID UniqueID WORKER_MODE WorkerID __version__ _config actor autoscaler
        available_resources cancel client cluster_resources cpp_function data get get_actor
        get_gpu_ids get_runtime_context init internal is_initialized java_actor_class
        java_function kill method nodes put remote shutdown timeline util wait widgets workflow
        ClusterID exceptions runtime_context""",
    "rayjupyter.util": """ActorPool accelerators as_completed collective connect
        deregister_serializer disable_log_once_globally disconnect enable_periodic_logging
        get_current_placement_group get_node_instance_id get_node_ip_address
        get_placement_group inspect_serializability iter list_named_actors log_once
        map_unordered pdb placement_group placement_group_table ray_debugpy
        register_serializer remove_placement_group""",
    "rayjupyter.exceptions": " ".join(RAY_ERRORS)
    + " ActorDiedErrorContext NodeDeathInfo Address RayException ErrorType",
    "rayjupyter.runtime_context": "RuntimeContext get_runtime_context",
    "rayjupyter.actor": """ActorClass ActorClassInheritanceException ActorHandle ActorMethod
        exit_actor method ActorProxy""",
}

RAY_RUNTIME_CONTEXT = """actor_id current_actor current_placement_group_id gcs_address get
    get_accelerator_ids get_actor_id get_actor_name get_assigned_resources get_job_id
    get_node_id get_node_labels get_placement_group_id get_resource_ids
    get_runtime_env_string get_session_name get_task_function_name get_task_id get_task_name
    get_temp_dir get_worker_id is_canceled job_id namespace node_id runtime_env
    should_capture_child_tasks_in_placement_group task_id was_current_actor_reconstructed"""


def _doc_rows():
    """(section's module, names in the first column, status) for each row of docs/ray_api.md."""
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "ray_api.md").read_text()
    module = ""
    for line in text.splitlines():
        if line.startswith("## "):
            module = re.findall(r"`([\w.]+)`", line)[-1]
        elif line.startswith("| ") and not line.startswith(("| ---", "| name", "| method")):
            cells = [c.strip() for c in line.strip("|").split("|")]
            yield module, re.findall(r"`([\w.]+)`", cells[0]), cells[1]


def test_every_ray_name_is_present_or_out_of_scope_in_the_docs_table():
    import importlib

    listed = {}
    for module, names, status in _doc_rows():
        for name in names:
            listed[(module, name)] = status
    for module, names in RAY_NAMES.items():
        mod = importlib.import_module(module)
        for name in names.split():
            status = listed.get((module, name))
            if module == "rayjupyter.runtime_context":
                assert hasattr(mod, name), name  # the section is a table of its methods
                continue
            assert status is not None, f"{module}.{name} is not in docs/ray_api.md"
            if status == "yes":
                assert hasattr(mod, name), f"{module}.{name} is marked yes but missing"
            else:
                assert status == "out of scope", (module, name, status)
                assert not hasattr(mod, name), f"{module}.{name} exists but is out of scope"


def test_runtime_context_has_every_method_of_rays():
    from rayjupyter.runtime_context import RuntimeContext

    for name in RAY_RUNTIME_CONTEXT.split():
        assert hasattr(RuntimeContext, name), name


def test_runtime_env_class(tmp_path):
    from rayjupyter.runtime_env import RuntimeEnv

    env = RuntimeEnv(env_vars={"A": "1"}, working_dir=str(tmp_path))
    assert env == {"env_vars": {"A": "1"}, "working_dir": str(tmp_path)}
    assert isinstance(env, dict)
    with pytest.raises(ValueError, match="pip"):
        RuntimeEnv(pip=["requests"])
