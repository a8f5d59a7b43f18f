"""Training on several devices or machines with ``tf.distribute`` (``edgecnn train --distribute``).

- ``none``: the default strategy, one device.
- ``mirrored``: ``MirroredStrategy`` over every local GPU (one replica on a CPU-only machine).
- ``multi-worker``: ``MultiWorkerMirroredStrategy``, the cluster and this process's task read
  from ``TF_CONFIG`` (the same variable on every worker but for ``task.index``).

The rules every strategy follows here:

- ``batch_size`` is the *global* batch: each of the R replicas takes ``batch_size / R`` images a
  step and the gradients are summed across replicas, so one step sees the same number of images
  as a single-device run of the same recipe.
- The learning rate is tied to the global batch and never rescaled with the number of workers:
  the same recipe gives the same optimization on 1 or N workers. Raising ``--batch-size`` is
  what changes it; scale ``--lr`` linearly with it then (Goyal et al., 2017), with warm-up.
- Data: each worker takes its own shard of the training images (``x[i::n]``, fixed for the run,
  reshuffled every epoch) and batches it per replica, so no worker decodes or augments another's
  images; every worker runs the same number of steps (the last partial global batch is dropped).
  Validation is sharded by tf.data (``AutoShardPolicy.DATA``), which handles its partial batch.
- The chief (task ``chief``, else ``worker`` 0) writes the run directory; the other workers
  write their checkpoints to a temporary directory that is removed when they finish. ``--resume``
  reads the chief's ``state.json`` and checkpoint on every worker, so the run directory must be
  on storage every worker reads (the same path through NFS or a shared volume).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecnn.errors import ConfigError, WorkerError
from edgecnn.train.config import DISTRIBUTE

log = logging.getLogger(__name__)

__all__ = ["DISTRIBUTE", "Cluster", "Distribution", "parse_tf_config", "cluster_for", "make_distribution",
           "wait_for_workers", "global_steps"]

_JOBS = ("chief", "worker")
_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\'')


@dataclass(frozen=True)
class Cluster:
    """The cluster of ``TF_CONFIG``: every task's address, chief first, and this process's place."""

    addresses: tuple[str, ...]  # chief (if any) then workers, in TF_CONFIG order
    index: int  # this task's position in ``addresses``
    task: str  # "chief" or "worker"
    task_index: int

    @property
    def num_workers(self) -> int:
        return len(self.addresses)

    @property
    def is_chief(self) -> bool:
        return self.index == 0  # the "chief" task, or worker 0 when there is none (TensorFlow's rule)

    @property
    def address(self) -> str:
        return self.addresses[self.index]


def _bad(problem: str) -> ConfigError:
    return ConfigError(f"TF_CONFIG {problem}. Set it on every worker, e.g. {_EXAMPLE} (docs/distributed.md).")


def _address(job: str, i: int, value: Any) -> str:
    host, _, port = str(value).rpartition(":") if isinstance(value, str) else ("", "", "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _bad(f"has {job}[{i}] = {value!r}, not a host:port address")
    return value


def parse_tf_config(text: str | None) -> Cluster:
    """The cluster and this task from the text of ``TF_CONFIG``.

    Raises:
        ConfigError: for a missing or malformed value (not JSON, no cluster, jobs other than
            chief/worker, a bad address, a task that is not in the cluster).
    """
    if not text or not text.strip():
        raise _bad("is not set: --distribute multi-worker reads the cluster and this worker's task from it")
    try:
        conf = json.loads(text)
    except ValueError as err:
        raise _bad(f"is not valid JSON ({err})") from None
    cluster = conf.get("cluster") if isinstance(conf, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise _bad("has no \"cluster\" mapping of job name to a list of host:port addresses")
    other = sorted(set(cluster) - set(_JOBS))
    if other:
        raise _bad(f"has job(s) {', '.join(other)}: MultiWorkerMirroredStrategy takes only chief and worker tasks")
    if not isinstance(cluster.get("chief", []), list) or len(cluster.get("chief", [])) > 1:
        raise _bad("has a \"chief\" job that is not a list of one address")
    addresses = []
    for job in _JOBS:
        tasks = cluster.get(job, [])
        if not isinstance(tasks, list) or (job in cluster and not tasks):
            raise _bad(f"has a \"{job}\" job that is not a non-empty list of addresses")
        addresses += [_address(job, i, a) for i, a in enumerate(tasks)]
    if len(set(addresses)) != len(addresses):
        raise _bad("lists the same address twice")
    task = conf.get("task")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise _bad(f"has no \"task\" naming one of its jobs ({', '.join(j for j in _JOBS if j in cluster)}) "
                   "and an index")
    index = task.get("index", 0)
    size = len(cluster[task["type"]])
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < size:
        raise _bad(f"has task index {index!r}, out of range for its {size} {task['type']} task(s) (0..{size - 1})")
    position = (index if task["type"] == "chief" else len(cluster.get("chief", [])) + index)
    return Cluster(tuple(addresses), position, task["type"], index)


def cluster_for(kind: str) -> Cluster | None:
    """This process's cluster for ``--distribute kind`` (from ``TF_CONFIG``; None unless multi-worker).

    Raises:
        ConfigError: for a missing or malformed ``TF_CONFIG``.
    """
    return parse_tf_config(os.environ.get("TF_CONFIG")) if kind == "multi-worker" else None


def global_steps(n: int, batch_size: int, *, replicas: int, workers: int) -> int:
    """Steps per epoch over ``n`` images at global batch ``batch_size`` split over ``replicas``
    on ``workers`` machines: every worker runs the same number (a partial last batch is dropped).

    Raises:
        ConfigError: if the batch does not split evenly across the replicas, or a worker's
            shard is smaller than its share of one global batch.
    """
    if batch_size % replicas:
        raise ConfigError(f"batch_size {batch_size} does not split across {replicas} replicas; pass a multiple of "
                          f"{replicas} (--batch-size is the global batch, split across the replicas).")
    steps = (n // workers) // (batch_size // workers)
    if steps < 1:
        raise ConfigError(f"{n} training images are fewer than one global batch of {batch_size} across {workers} "
                          "workers; lower --batch-size or add images.")
    return steps


def wait_for_workers(cluster: Cluster, *, timeout_s: float, poll_s: float = 0.2) -> None:
    """Block until every other task of ``cluster`` accepts a TCP connection on its address.

    TensorFlow's own start-up waits without a limit for a worker that never comes (and ignores
    SIGTERM meanwhile), so this rendezvous comes first: each worker listens on its own address
    while it polls the others'. When it returns, TensorFlow's server takes over the port.

    Raises:
        ConfigError: if this task's port cannot be listened on.
        WorkerError: if a worker did not answer within ``timeout_s``.
    """
    host, port = cluster.address.rsplit(":", 1)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", int(port)))
    except OSError as err:
        listener.close()
        raise ConfigError(f"Cannot listen on {cluster.address} (this worker's TF_CONFIG address): {err.strerror}; "
                          "free the port or give this task another one in every worker's TF_CONFIG.") from None
    listener.listen(16)
    listener.settimeout(poll_s)
    stop = threading.Event()
    acceptor = threading.Thread(target=_accept_until, args=(listener, stop), daemon=True)
    acceptor.start()
    pending = {i: a for i, a in enumerate(cluster.addresses) if i != cluster.index}
    deadline = time.monotonic() + timeout_s
    try:
        while pending and time.monotonic() < deadline:
            for i, address in list(pending.items()):
                peer_host, peer_port = address.rsplit(":", 1)
                with contextlib.suppress(OSError):
                    socket.create_connection((peer_host, int(peer_port)), timeout=poll_s).close()
                    del pending[i]
            if pending:
                time.sleep(poll_s)
    finally:
        stop.set()
        acceptor.join()
        listener.close()
    if pending:
        missing = ", ".join(f"task {i} at {a}" for i, a in pending.items())
        raise WorkerError(f"{missing} did not answer within {timeout_s:g} s; start every worker of TF_CONFIG (the "
                          "same cluster, each its own task index) or raise --worker-timeout.")


def _accept_until(listener: socket.socket, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except (TimeoutError, OSError):
            continue
        # Close with a reset: no TIME_WAIT left on the port TensorFlow binds next.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()


@dataclass(frozen=True)
class Distribution:
    """The strategy of one training process and this process's place in it."""

    kind: str = "none"
    strategy: Any = None  # a tf.distribute.Strategy; None for ``none``
    cluster: Cluster | None = None

    @property
    def num_replicas(self) -> int:
        return self.strategy.num_replicas_in_sync if self.strategy is not None else 1

    @property
    def num_workers(self) -> int:
        return self.cluster.num_workers if self.cluster else 1

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    @property
    def worker(self) -> str:
        return f"worker {self.cluster.index} of {self.num_workers}" if self.cluster else "the only worker"

    def scope(self) -> contextlib.AbstractContextManager:
        """The strategy's scope, where models and optimizers are built (their variables are then
        replicated, initial values sent from the chief), or a no-op. Only variable creation goes
        in it: a model made for one worker's predictions (:meth:`local_copy`) must not."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    @contextlib.contextmanager
    def running(self, run: Path) -> Iterator[None]:
        """Around a whole run: Keras's multi-worker fixes, and a collective that failed because a
        worker went away turned into a one-line :class:`WorkerError`."""
        with contextlib.ExitStack() as stack:
            if self.num_workers > 1:
                from edgecnn.train._distribute_compat import multi_worker_fit_fixes

                stack.enter_context(multi_worker_fit_fixes())
            try:
                yield
            except Exception as err:
                lost = _lost_worker(err, self, run)
                if lost is None:
                    raise
                raise lost from err

    @contextlib.contextmanager
    def output_dir(self, run: Path) -> Iterator[Path]:
        """Where this process writes: the run directory on the chief, a temporary directory
        (removed afterwards, however the block ends) on the other workers."""
        if self.cluster is None or self.cluster.is_chief:  # self.is_chief, said so that mypy sees the cluster
            yield run
            return
        temp = Path(tempfile.mkdtemp(prefix=f"edgecnn-worker{self.cluster.index}-"))
        try:
            yield temp
        finally:
            shutil.rmtree(temp, ignore_errors=True)

    def steps_per_epoch(self, n: int, batch_size: int) -> int:
        """Optimizer steps per epoch over ``n`` images at global batch ``batch_size`` (see
        :func:`global_steps`; without a strategy the last batch may be partial).

        Raises:
            ConfigError: as :func:`global_steps`.
        """
        if self.strategy is None:
            from edgecnn.train.pipeline import steps_per_epoch

            return steps_per_epoch(n, batch_size)
        return global_steps(n, batch_size, replicas=self.num_replicas, workers=self.num_workers)

    def training_data(self, x: Any, y: Any, *, batch_size: int, make: Callable[..., Any]) -> Any:
        """What ``fit`` takes: ``make(x, y, batch)`` (a tf.data pipeline) run on this worker's shard
        with per-replica batches, or as is without a strategy."""
        if self.strategy is None:
            return make(x, y, batch_size)
        steps = self.steps_per_epoch(len(x), batch_size)
        per_replica = batch_size // self.num_replicas
        local_replicas = self.num_replicas // self.num_workers

        def shard(context: Any) -> Any:
            i, n = context.input_pipeline_id, context.num_input_pipelines
            return make(x[i::n], y[i::n], per_replica).take(steps * local_replicas)

        return self.strategy.distribute_datasets_from_function(shard)

    def validation_data(self, dataset: Any) -> Any:
        """A global-batch validation pipeline, sharded by element across workers."""
        if self.strategy is None:
            return dataset
        import tensorflow as tf

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return dataset.with_options(options)

    def local_copy(self, model: Any) -> Any:
        """``model`` with the same weights outside the strategy, for predictions on one worker
        (a distributed ``predict`` would gather every worker's outputs). Call it outside
        :meth:`scope`."""
        if self.strategy is None:
            return model
        copy = type(model).from_config(model.get_config())
        copy.set_weights(model.get_weights())
        return copy


def make_distribution(kind: str, *, cluster: Cluster | None = None, batch_size: int | None = None,
                      num_train: int | None = None, worker_timeout_s: float = 300.0) -> Distribution:
    """Start the strategy ``kind`` names (multi-worker: after every worker of ``cluster``, by
    default read from ``TF_CONFIG``, answered).

    ``batch_size`` and ``num_train``, when given, are checked against the workers first: an error
    on one worker after the others met would leave them waiting in TensorFlow's start-up.

    Raises:
        ConfigError: malformed ``TF_CONFIG``, this worker's port is taken, or a batch that does
            not split across the workers.
        WorkerError: a worker did not answer within ``worker_timeout_s``.
    """
    if kind == "none":
        return Distribution()
    import tensorflow as tf

    import edgecnn.train._tf  # noqa: F401  (TensorFlow quietly)

    # tf.distribute logs every all-reduce it builds at INFO; the CLI's log level is INFO.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    if kind == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        strategy = tf.distribute.MirroredStrategy()
        if gpus:
            log.info("Distribute: mirrored over %d GPUs (%d replicas).", len(gpus), strategy.num_replicas_in_sync)
        else:
            log.info("Distribute: mirrored, but no GPU is visible: one replica on the CPU, no faster than "
                     "--distribute none (use multi-worker to train on several machines).")
        return Distribution("mirrored", strategy)
    if cluster is None:  # multi-worker: TF_CONFIG's
        cluster = parse_tf_config(os.environ.get("TF_CONFIG"))
    if batch_size is not None and num_train is not None:  # one replica a worker on CPUs; GPUs are checked later
        global_steps(num_train, batch_size, replicas=cluster.num_workers, workers=cluster.num_workers)
    wait_for_workers(cluster, timeout_s=worker_timeout_s)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    dist = Distribution("multi-worker", strategy, cluster)
    log.info("Distribute: multi-worker, %s (%s task %d at %s%s), %d replicas in sync.", dist.worker, cluster.task,
             cluster.task_index, cluster.address, ", chief" if cluster.is_chief else "", dist.num_replicas)
    return dist


def _lost_worker(err: BaseException, dist: Distribution, run: Path) -> WorkerError | None:
    """The one-line error for a collective that failed because a worker went away, else None."""
    import tensorflow as tf

    lost = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
            tf.errors.AbortedError)
    if dist.num_workers < 2 or not isinstance(err, lost):
        return None
    first = " ".join(str(err.message if hasattr(err, "message") else err).split())[:160]
    return WorkerError(f"{dist.worker.capitalize()}: a worker stopped answering ({type(err).__name__}: {first}); "
                       f"restart every worker with `edgecnn train --resume {run}`.")
