"""Where the per-case work of a cohort run happens: ``local`` (this process; the default) or ``ray``.

The executor changes only *where* the per-case functions (read, compute, write) run, never what
they do: the cohort runners (:func:`medseg.batch.run_batch`, :func:`medseg.metrics.cohort.evaluate_cohort`,
:func:`medseg.wsi.features.extract_features_batch`) keep the manifest, resume and error handling
in the driver, and hand the same functions to :mod:`medseg.ray_runner` when ``executor="ray"``.

Nothing here imports Ray: the default path needs only the core dependencies. Ray is imported
lazily by :func:`require_ray` (``pip install 'medseg[distributed]'``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medseg.errors import ConfigError

EXECUTORS = ("local", "ray")
INSTALL_HINT = "pip install 'medseg[distributed]'"


@dataclass(frozen=True)
class ExecutorSpec:
    """``name``: local or ray; ``address``: a Ray cluster (``auto``, ``HOST:6379``, ``ray://HOST:10001``;
    None starts a private one-machine cluster); ``actors``: model actors (default one per GPU of the
    cluster, else one); ``max_retries``: re-runs of a task or actor lost to a crashed worker or node."""

    name: str = "local"
    address: str | None = None
    actors: int | None = None
    max_retries: int = 3

    @property
    def is_local(self) -> bool:
        return self.name == "local"


LOCAL = ExecutorSpec()


def executor_spec(name: str | None = "local", address: str | None = None, actors: int | None = None,
                  max_retries: int = 3) -> ExecutorSpec:
    """Validate CLI/config values into an :class:`ExecutorSpec` (ConfigError naming the option)."""
    name = (name or "local").strip().lower()
    if name not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}", code="bad_params")
    if name == "local" and (address or actors):
        raise ConfigError("--ray-address/--ray-actors need --executor ray", code="bad_params")
    if actors is not None and int(actors) < 1:
        raise ConfigError(f"--ray-actors must be >= 1, got {actors}", code="bad_params")
    if int(max_retries) < 0:
        raise ConfigError(f"max_retries must be >= 0, got {max_retries}", code="bad_params")
    return ExecutorSpec(name, address or None, int(actors) if actors else None, int(max_retries))


def as_spec(executor: ExecutorSpec | str | None) -> ExecutorSpec:
    if executor is None:
        return LOCAL
    if isinstance(executor, ExecutorSpec):
        return executor
    return executor_spec(executor)


def require_ray():
    """Import and return the ``ray`` module, or fail with the install hint."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--executor ray needs Ray Data, which is not installed ({exc}); install it with "
                          f"{INSTALL_HINT}", code="missing_dependency") from None
    return ray


def add_executor_args(p) -> None:
    """The ``--executor``/``--ray-address``/``--ray-actors`` options of the cohort verbs."""
    p.add_argument("--executor", choices=list(EXECUTORS), default="local",
                   help="run cases in this process (local, default) or on a Ray cluster (ray; needs "
                        f"{INSTALL_HINT})")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster to join (auto, HOST:6379, ray://HOST:10001); default: start a "
                        "one-machine cluster")
    p.add_argument("--ray-actors", type=int, default=None, metavar="N",
                   help="model actors on Ray (default: one per GPU of the cluster, else one)")


def spec_from_args(args) -> ExecutorSpec:
    """The executor of a CLI run; with ``--executor ray`` fails at once (install hint) when Ray is missing."""
    spec = executor_spec(getattr(args, "executor", "local"), getattr(args, "ray_address", None),
                         getattr(args, "ray_actors", None))
    if not spec.is_local:
        require_ray()
    return spec


def error_of(exc: BaseException) -> dict[str, str]:
    """``{"code", "message"}`` recorded for a failed case (the same on every executor)."""
    code = getattr(exc, "code", None) or type(exc).__name__
    return {"code": str(code), "message": str(exc)}


@dataclass(frozen=True)
class RemoteStages:
    """The per-case functions of a batch in a form that can be shipped to other processes.

    ``load(input) -> data`` and ``write(case_id, result, out_dir) -> paths`` run in CPU tasks;
    ``compute_factory()`` runs once per model actor and returns ``compute(case_id, data) -> result``
    (so the model is loaded once per actor, never per case). All three must pickle: module-level
    functions or ``functools.partial`` of them.
    """

    load: Callable[[Any], Any] | None
    compute_factory: Callable[[], Callable[[str, Any], Any]]
    write: Callable[[str, Any, Any], Any]
    gpu: bool = True  # model actors take a GPU each when the cluster has GPUs
