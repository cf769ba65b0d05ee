"""CPUs a model replica reserves, from its models' `instance_group` (`num_cpus: auto`).

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
_CPU_KINDS = (mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_MODEL)


def model_cpus(config: mc.ModelConfig, cpu_per_instance: float = CPU_PER_INSTANCE) -> float:
    """One model's CPU share (the rule above)."""
    completed = mc.ModelConfig()
    completed.CopyFrom(config)
    complete_instance_groups(completed)
    return sum(g.count for g in completed.instance_group if g.kind in _CPU_KINDS) * cpu_per_instance


def replica_cpus(shares: Iterable[float], models_per_replica: int | None = None,
                 cpu_per_instance: float = CPU_PER_INSTANCE) -> float:
    """What one replica reserves: the sum of its models' shares (of the `models_per_replica`
    largest, for a multiplexed replica), at least `cpu_per_instance`."""
    ordered = sorted(shares, reverse=True)
    if models_per_replica is not None:
        ordered = ordered[:models_per_replica]
    return math.ceil(max(sum(ordered), cpu_per_instance) * 100 - 1e-9) / 100


def repository_shares(options: Any, cpu_per_instance: float = CPU_PER_INSTANCE) -> Mapping[str, float]:
    """Each startup model's CPU share, from `triserve serve` options (ServerOptions): every model
    of the Triton repositories, or in explicit mode the ones --load-model names."""
    from triserve.errors import ServerError
    from triserve.repository.config import parse_pbtxt
    from triserve.repository.triton import find_models

    if options.archives.enabled or options.tfserving.enabled:
        raise ValueError("num_cpus=auto reads instance_group from Triton repositories (config.pbtxt); these model"
                         " sources (TorchServe archives, TF Serving configs) have none: give num_cpus")
    try:
        folders = find_models(list(options.model_repositories))
    except ServerError as e:
        raise ValueError(f"num_cpus=auto: {e.message}") from None
    names = list(folders)
    if options.model_control_mode == "explicit" and "*" not in options.load_models:
        names = [n for n in options.load_models if n in folders]
    shares = {}
    for name in names:
        path = folders[name] / "config.pbtxt"
        try:
            config = parse_pbtxt(path) if path.is_file() else mc.ModelConfig()
            config.name = config.name or name
            shares[name] = model_cpus(config, cpu_per_instance)
        except ServerError as e:
            raise ValueError(f"num_cpus=auto: model '{name}': {e.message}") from None
    if not shares:
        raise ValueError("num_cpus=auto: the model repositories hold no model to size the replicas by")
    return shares
