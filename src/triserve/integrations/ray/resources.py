"""CPUs and GPUs a model replica reserves, from its models' `instance_group` (`num_cpus: auto`,
`num_gpus: auto`).

The rule:
- a model's share is `cpu_per_instance` (default 0.5) for each CPU instance its completed
  instance_group asks for: the groups as the engine completes them (core.instances: no
  instance_group, or count 0, is two CPU instances; KIND_AUTO is KIND_CPU), counting KIND_CPU and
  KIND_MODEL groups; KIND_GPU instances reserve no CPU (give num_gpus for them). So a model with
  the default instance_group takes 1 CPU, one with `count: 1` takes 0.5, one with `count: 4` 2.
- a replica that serves every model (the TriserveModels deployment) reserves the sum of its
  models' shares; a multiplexed replica (at most N models at a time) reserves the sum of the N
  largest shares.
- never less than `cpu_per_instance` (a replica whose models all run on GPUs still runs its
  event loop and batcher), rounded up to a hundredth of a CPU.

GPUs (`num_gpus: auto`), the same way: each KIND_GPU instance is `gpu_per_instance` (default 0.5)
of a GPU, on the devices its group names (`gpus`, none: the replica's first GPU, as the engine
places it). A replica whose models name one device reserves the sum of its models' fractions, at
most 1 (several replicas share a GPU); models that name devices 0..n-1 need n whole GPUs (Ray
numbers a replica's GPUs from 0). No KIND_GPU instance: no GPU.

The configs are read from the Triton repositories' config.pbtxt files when the application is
built (nothing loads). Other model sources (a TorchServe model store, TF Serving configs, .mar
files) carry no instance_group there: `num_cpus: auto` refuses them; give num_cpus instead.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from tritonclient.grpc import model_config_pb2 as mc

from triserve.core.instances import complete_instance_groups

CPU_PER_INSTANCE = 0.5
GPU_PER_INSTANCE = 0.5
_CPU_KINDS = (mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_MODEL)


def model_cpus(config: mc.ModelConfig, cpu_per_instance: float = CPU_PER_INSTANCE) -> float:
    """One model's CPU share (the rule above)."""
    completed = mc.ModelConfig()
    completed.CopyFrom(config)
    complete_instance_groups(completed)
    return sum(g.count for g in completed.instance_group if g.kind in _CPU_KINDS) * cpu_per_instance


def model_gpus(config: mc.ModelConfig, gpu_per_instance: float = GPU_PER_INSTANCE) -> tuple[float, int]:
    """One model's GPU need: (its fraction of a GPU, how many devices its groups name: the
    highest index + 1; 0 without KIND_GPU instances)."""
    completed = mc.ModelConfig()
    completed.CopyFrom(config)
    complete_instance_groups(completed)
    fraction, devices = 0.0, 0
    for group in completed.instance_group:
        if group.kind == mc.ModelInstanceGroup.KIND_GPU:
            gpus = list(group.gpus) or [0]
            fraction += group.count * len(gpus) * gpu_per_instance
            devices = max(devices, max(gpus) + 1)
    return fraction, devices


def replica_gpus(needs: Iterable[tuple[float, int]], models_per_replica: int | None = None) -> float:
    """What one replica reserves (the rule above): whole GPUs when its models name more than one
    device, else the sum of the fractions (of the `models_per_replica` largest), at most one GPU."""
    ordered = sorted(needs, reverse=True)
    devices = max((d for _, d in ordered), default=0)
    if devices > 1:
        return float(devices)
    if models_per_replica is not None:
        ordered = ordered[:models_per_replica]
    return min(1.0, math.ceil(sum(f for f, _ in ordered) * 100 - 1e-9) / 100)


def replica_cpus(shares: Iterable[float], models_per_replica: int | None = None,
                 cpu_per_instance: float = CPU_PER_INSTANCE) -> float:
    """What one replica reserves: the sum of its models' shares (of the `models_per_replica`
    largest, for a multiplexed replica), at least `cpu_per_instance`."""
    ordered = sorted(shares, reverse=True)
    if models_per_replica is not None:
        ordered = ordered[:models_per_replica]
    return math.ceil(max(sum(ordered), cpu_per_instance) * 100 - 1e-9) / 100


def repository_configs(options: Any) -> Mapping[str, mc.ModelConfig]:
    """Each startup model's config, from `triserve serve` options (ServerOptions): every model of
    the Triton repositories, or in explicit mode the ones --load-model names. Errors are
    ValueErrors that name the model."""
    from triserve.errors import ServerError
    from triserve.repository.config import parse_pbtxt
    from triserve.repository.triton import find_models

    if options.archives.enabled or options.tfserving.enabled:
        raise ValueError("instance_group comes from Triton repositories (config.pbtxt); these model sources"
                         " (TorchServe archives, TF Serving configs) have none: give a number")
    try:
        folders = find_models(list(options.model_repositories))
    except ServerError as e:
        raise ValueError(e.message) from None
    names = list(folders)
    if options.model_control_mode == "explicit" and "*" not in options.load_models:
        names = [n for n in options.load_models if n in folders]
    configs = {}
    for name in names:
        path = folders[name] / "config.pbtxt"
        try:
            config = parse_pbtxt(path) if path.is_file() else mc.ModelConfig()
            config.name = config.name or name
            complete_instance_groups(config)
        except ServerError as e:
            raise ValueError(f"model '{name}': {e.message}") from None
        configs[name] = config
    if not configs:
        raise ValueError("the model repositories hold no model to size the replicas by")
    return configs
