"""Ray workers, each holding one replica of a model, and the loop that runs a job's shards on them.

:class:`Workers` starts a local Ray cluster on the fly (``Workers(2)``: two workers on 127.0.0.1) or joins a
running one (``Workers(address="auto")`` or ``"ray://head:10001"``), with one Ray actor per worker. Each actor
loads its own replica of a job's model with :func:`codecircuits.load_model`, from the path the parent's model
was loaded from, checks it against the parent's weights, and keeps it for every later shard and job on that
model. On a machine or
cluster with GPUs each actor takes one GPU; on CPUs each takes ``threads`` cores and runs torch on that many
threads.

:meth:`Workers.map` keeps every actor busy with one shard at a time and draws one progress bar over all of
them. A worker whose process dies (killed, out of memory, a lost node) is restarted by Ray, which reloads its
replica and runs the shard it held again, so the job loses only that shard's time. A shard whose job raises
on its input is recorded as a :class:`~codecircuits.distributed.shards.ShardFailure` and the other shards go on.

Ray is imported only here, and only when a job is given workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import InputError
from .shards import Shard, ShardFailure

RETRIES = 3  # times Ray restarts a dead worker and runs its shard again


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads its replica: :func:`codecircuits.load_model`'s arguments, and the parent's weights'
    fingerprint, which the replica must match."""

    name_or_path: str
    dtype: str = "float32"
    trust_remote_code: bool = False
    compatibility_mode: bool = True
    bos: str | None = "default"
    fingerprint: tuple[float, float] = (0.0, 0.0)

    @property
    def key(self) -> tuple:
        return (self.name_or_path, self.dtype, self.trust_remote_code, self.compatibility_mode, self.bos)


def fingerprint(model) -> tuple[float, float]:
    """Two float64 sums over the model's parameters (position-weighted and absolute): equal for replicas loaded
    from the same weights, different after any weight edit."""
    s, a = 0.0, 0.0
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            if p.is_floating_point():
                d = p.detach().double()
                s += (i + 1) * float(d.sum())
                a += float(d.abs().sum())
    return (s, a)


def model_spec(model) -> ModelSpec:
    """The :class:`ModelSpec` of a model loaded by :func:`codecircuits.load_model`."""
    load = getattr(model, "codecircuits_load", None)
    if load is None:
        raise InputError(
            "This model was not loaded by codecircuits.load_model, so workers cannot load a replica of it. Save it "
            "(model.save_pretrained(dir) on the Hugging Face model) and load that directory with load_model, or "
            "run without workers."
        )
    return ModelSpec(**load, fingerprint=fingerprint(model))


def _same(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return all(abs(x - y) <= 1e-6 * max(1.0, abs(x), abs(y)) for x, y in zip(a, b))


class _Worker:
    """The body of a worker actor: a process with its torch threads that holds one model replica at a time,
    loaded on first use and kept for the shards that follow (a job on another model replaces it)."""

    def __init__(self, threads: int | None):
        if threads:
            torch.set_num_threads(int(threads))
        self.key: tuple | None = None
        self.model = None
        self.fingerprint: tuple[float, float] | None = None

    def _load(self, spec: ModelSpec):
        if self.key != spec.key:
            from ..models.loading import apply_bos, load_model

            self.model = None  # free the last replica before loading the next
            model = load_model(spec.name_or_path, dtype=getattr(torch, spec.dtype),
                               trust_remote_code=spec.trust_remote_code, compatibility_mode=spec.compatibility_mode)
            apply_bos(model, spec.bos)
            with torch.no_grad():  # warm up (allocator, kernels) here, not in the first shard's time
                model(torch.zeros((1, 8), dtype=torch.long, device=model.cfg.device))
            self.model, self.key, self.fingerprint = model, spec.key, fingerprint(model)
        return self.model

    def info(self, spec: ModelSpec | None = None) -> dict:
        if spec is not None:
            self._load(spec)
        return {"pid": os.getpid(), "fingerprint": self.fingerprint, "threads": torch.get_num_threads()}

    def run(self, spec: ModelSpec, fn: Callable, shard: Shard, *args, **kwargs):
        return fn(self._load(spec), shard, *args, **kwargs)


class Workers:
    """A set of Ray workers: ``Workers(n)`` starts a local cluster of ``n`` (127.0.0.1 only), ``Workers(address=...)``
    joins a running cluster (``"auto"``, ``"host:6379"`` or ``"ray://host:10001"``) with ``n`` workers (default: one
    per GPU, else one per ``threads`` CPUs). Use it as a context manager, or call :meth:`close`; a cluster it
    started stops with it. Pass it (or just ``n``) as ``workers=`` to the sharded jobs; one ``Workers`` reused
    across jobs keeps the workers and their model replica loaded (one model at a time: a job on another model
    loads that one in the same processes).
    """

    def __init__(
        self,
        n: int | None = None,
        *,
        address: str | None = None,
        threads: int | None = 1,
        gpus: float | None = None,
        retries: int = RETRIES,
    ):
        if n is not None and int(n) < 1:
            raise InputError(f"workers must be at least 1; got {n}.")
        if n is None and address is None:
            raise InputError("Give the number of workers (Workers(2)) or the address of a running Ray cluster.")
        if threads is not None and int(threads) < 1:
            raise InputError(f"threads per worker must be at least 1; got {threads}.")
        self.n = None if n is None else int(n)
        self.address = address
        self.threads = None if threads is None else int(threads)
        self.gpus = gpus
        self.retries = int(retries)
        self._ray = None
        self._own = False
        self._actors: list | None = None

    # -- cluster ---------------------------------------------------------------------------------------------

    def start(self):
        """Start or join the cluster (done on first use); returns the ``ray`` module."""
        if self._ray is not None:
            return self._ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports leave the machine
        try:
            import ray
        except ImportError:
            raise InputError(
                "Sharded jobs need Ray: pip install 'codecircuits[distributed]' (make install includes it)."
            ) from None
        if not ray.is_initialized():
            common = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if self.address is None:
                cpus = self.n * (self.threads or 1)
                ray.init(address="local", num_cpus=cpus, _node_ip_address="127.0.0.1", **common)
                self._own = True
            else:
                try:
                    ray.init(address=self.address, **common)
                except (ConnectionError, RuntimeError, ValueError) as e:
                    raise InputError(
                        f"Could not join the Ray cluster at {self.address!r} ({e}). Start one with `ray start --head` "
                        "or pass --workers N for a local cluster."
                    ) from None
        self._ray = ray
        return ray

    @property
    def gpus_per_worker(self) -> float:
        if self.gpus is not None:
            return float(self.gpus)
        return 1.0 if self.start().cluster_resources().get("GPU", 0) >= 1 else 0.0

    @property
    def size(self) -> int:
        """The number of workers."""
        if self.n is not None:
            return self.n
        res = self.start().cluster_resources()
        g = self.gpus_per_worker
        return max(1, int(res.get("GPU", 0) // g) if g else int(res.get("CPU", 1) // (self.threads or 1)))

    def close(self) -> None:
        """Stop the workers, and the cluster if this object started it."""
        if self._ray is None:
            return
        self._stop_actors()
        ray, self._ray = self._ray, None
        if self._own and ray.is_initialized():
            ray.shutdown()
        self._own = False

    def _stop_actors(self) -> None:
        for a in self._actors or ():
            try:
                self._ray.kill(a)
            except Exception:  # an actor already gone
                pass
        self._actors = None

    def __enter__(self) -> Workers:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- replicas --------------------------------------------------------------------------------------------

    def actors(self) -> list:
        """The worker actors (started on first use)."""
        ray = self.start()
        if self._actors is None:
            gpus = self.gpus_per_worker
            need, kind = (self.size * gpus, "GPU") if gpus else (self.size * (self.threads or 1), "CPU")
            free = ray.available_resources().get(kind, 0)
            if self.address is None and free < need:  # on this machine's cluster the actors would wait forever
                raise InputError(
                    f"The Ray cluster of this process has {free:g} free {kind}s and {self.size} workers need {need:g} "
                    "(another Workers holds the rest?): close that one, or pass it as workers= to reuse it."
                )
            cls = ray.remote(_Worker).options(num_cpus=0 if gpus else (self.threads or 1), num_gpus=gpus,
                                              max_restarts=self.retries, max_task_retries=self.retries)
            self._actors = [cls.remote(None if gpus else self.threads) for _ in range(self.size)]
        return self._actors

    def replicas(self, model) -> tuple[ModelSpec, list]:
        """``model``'s spec and the actors, each holding a replica of it (loaded and checked against this
        process's weights)."""
        spec = model_spec(model)
        actors = self.actors()
        try:
            infos = self._ray.get([a.info.remote(spec) for a in actors])
        except self._ray.exceptions.RayTaskError as e:
            cause = e.cause if getattr(e, "cause", None) is not None else e
            raise InputError(
                f"The workers could not load the model from {spec.name_or_path} ({type(cause).__name__}: {cause}); "
                "every worker must see that path (on a cluster: a shared file system, or a registry name)."
            ) from None
        if any(not _same(tuple(info["fingerprint"]), spec.fingerprint) for info in infos):
            raise InputError(
                f"The model's weights differ from the ones loaded from {spec.name_or_path} (edited after loading?), "
                "so workers would run another model. Save the edited model and load it from there, or run without "
                "workers."
            )
        return spec, actors

    def pids(self) -> list[int]:
        """The process id of each worker (to watch them, or to test a worker's death)."""
        ray = self.start()
        return [info["pid"] for info in ray.get([a.info.remote() for a in self.actors()])]

    # -- running shards --------------------------------------------------------------------------------------

    def map(
        self,
        model,
        fn: Callable,
        shards: Sequence[Shard],
        *args,
        describe: Callable[[Shard], str] | None = None,
        on_result: Callable[[Shard, object], None] | None = None,
        progress: bool = True,
        desc: str = "shards",
        **kwargs,
    ) -> tuple[list, list[ShardFailure]]:
        """Run ``fn(model, shard, *args, **kwargs)`` for every shard on the workers holding ``model``.

        ``fn`` must be a module-level function (it is sent to the workers by reference). Each positional
        argument goes into Ray's object store once (tensors on the CPU), not once per shard; keyword arguments
        travel with every shard, so keep them small. ``on_result(shard, result)``
        runs in this process as each shard completes (in completion order). Returns the results in shard order
        (``None`` for a failed shard) and the failures; ``describe(shard)`` names a failed shard's items.
        """
        from ..core.batching import progress_bar

        ray = self.start()
        spec, actors = self.replicas(model)
        args = tuple(ray.put(a.detach().cpu() if isinstance(a, torch.Tensor) else a) for a in args)
        results: list = [None] * len(shards)
        failures: list[ShardFailure] = []
        queue = list(shards)
        running: dict = {}

        def submit(actor) -> None:
            if queue:
                shard = queue.pop(0)
                running[actor.run.remote(spec, fn, shard, *args, **kwargs)] = (shard, actor)

        bar = progress_bar(sum(s.size for s in shards), desc, progress)
        try:
            for actor in actors:
                submit(actor)
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                shard, actor = running.pop(done[0])
                try:
                    out = ray.get(done[0])
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if getattr(e, "cause", None) is not None else e
                    failures.append(_failure(shard, describe, f"{type(cause).__name__}: {cause}"))
                except ray.exceptions.RayActorError as e:
                    failures.append(_failure(shard, describe, f"its worker died {self.retries + 1} times ({e})"))
                else:
                    results[shard.index] = out
                    if on_result is not None:
                        on_result(shard, out)
                bar.update(shard.size)
                submit(actor)
        finally:
            bar.close()
            for ref in running:
                ray.cancel(ref, force=False)
        return results, failures


def _failure(shard: Shard, describe, error: str) -> ShardFailure:
    return ShardFailure(shard, describe(shard) if describe is not None else "", error)


def as_workers(workers) -> Workers | None:
    """``workers=`` of a sharded job: ``None`` (one process), a count (a local cluster), an address string or a
    :class:`Workers`."""
    if workers is None or isinstance(workers, Workers):
        return workers
    if isinstance(workers, bool):
        raise InputError("workers must be a number of workers, a Ray address or a Workers object, not a bool.")
    if isinstance(workers, int):
        return Workers(workers)
    if isinstance(workers, str):
        return Workers(address=workers)
    raise InputError(f"workers must be a number, a Ray address or a Workers object; got {type(workers).__name__}.")


class using:
    """``with using(workers) as w:`` — ``w`` is the :class:`Workers` to use; one made here is closed on exit,
    one passed in stays open for the caller's next job."""

    def __init__(self, workers):
        self._given = isinstance(workers, Workers)
        self.workers = as_workers(workers)

    def __enter__(self) -> Workers:
        return self.workers

    def __exit__(self, *exc) -> None:
        if not self._given and self.workers is not None:
            self.workers.close()


__all__ = ["ModelSpec", "Workers", "as_workers", "fingerprint", "model_spec", "using"]
