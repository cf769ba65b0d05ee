"""num_cpus=auto and num_gpus=auto: each replica's CPUs and GPUs from its models' instance_group
(0.5 per instance by default), read from the repositories' config.pbtxt files, no cluster and no model loaded."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tests.inprocess import tiny_repository
from triserve.integrations.ray.deployments import settings_from_args
from triserve.integrations.ray.resources import model_cpus, model_gpus, replica_cpus, replica_gpus


def _config(text: str) -> mc.ModelConfig:
    return text_format.Parse(f'name: "m"\n{text}', mc.ModelConfig())


@pytest.mark.parametrize("groups, cpus", [
    ("", 1.0),  # no instance_group: the engine's default, two CPU instances
    ("instance_group [{ count: 1 kind: KIND_CPU }]", 0.5),
    ("instance_group [{ count: 4 kind: KIND_CPU }]", 2.0),
    ("instance_group [{ kind: KIND_CPU }]", 1.0),  # count 0: the default two
    ("instance_group [{ count: 3 kind: KIND_AUTO }]", 1.5),  # AUTO runs on the CPU
    ("instance_group [{ count: 2 kind: KIND_MODEL }]", 1.0),
    ("instance_group [{ count: 2 kind: KIND_GPU }]", 0.0),  # GPU instances: num_gpus, no CPU
    ("instance_group [{ count: 1 kind: KIND_CPU }, { count: 1 kind: KIND_GPU }, { count: 2 kind: KIND_CPU }]", 1.5),
])
def test_a_models_share_is_half_a_cpu_per_cpu_instance(groups, cpus):
    assert model_cpus(_config(groups)) == cpus


def test_a_share_per_instance_can_be_given():
    assert model_cpus(_config("instance_group [{ count: 3 kind: KIND_CPU }]"), 0.25) == 0.75


def test_a_replica_takes_the_sum_or_the_largest_shares_it_can_hold():
    assert replica_cpus([1.0, 0.5, 2.0]) == 3.5  # every model on every replica
    assert replica_cpus([1.0, 0.5, 2.0], models_per_replica=2) == 3.0  # multiplexed: the 2 largest
    assert replica_cpus([0.0, 0.0]) == 0.5  # GPU-only models: still half a CPU for the event loop
    assert replica_cpus([1 / 3]) == 0.5 and replica_cpus([1 / 3], cpu_per_instance=0.1) == 0.34  # rounded up


def _repository(tmp_path):
    repo = tiny_repository(tmp_path / "repo")  # simple, scores: one CPU instance; doubler: no config.pbtxt
    config = repo / "simple" / "config.pbtxt"
    config.write_text(config.read_text().replace("count: 1", "count: 3"))
    return repo


def test_num_cpus_auto_sizes_the_replicas_from_the_repository(tmp_path):
    repo = _repository(tmp_path)
    base = {"model_repository": str(repo), "num_cpus": "auto"}
    # simple 3 instances (1.5), scores 1 (0.5), doubler the default 2 (1.0)
    assert settings_from_args(base).model_options()["ray_actor_options"] == {"num_cpus": 3.0}
    assert settings_from_args({**base, "multiplex": 1}).num_cpus == 1.5
    assert settings_from_args({**base, "multiplex": 2}).num_cpus == 2.5
    assert settings_from_args({**base, "cpu_per_instance": 0.25}).num_cpus == 1.5
    explicit = {**base, "serve_args": "--model-control-mode explicit --load-model scores"}
    assert settings_from_args(explicit).num_cpus == 0.5  # only what the replicas load


@pytest.mark.parametrize("args, message", [
    ({"num_cpus": "many"}, "num_cpus must be a number of CPUs or 'auto'"),
    ({"num_cpus": "1", "cpu_per_instance": 0.5}, "cpu_per_instance goes with num_cpus=auto"),
    ({"num_cpus": "auto", "cpu_per_instance": 0}, "cpu_per_instance must be more than 0"),
    ({"num_cpus": "auto", "serve_args": "--model-store /nowhere --models all"}, "num_cpus=auto: instance_group comes from Triton repositories.*have none: give a number"),
])
def test_bad_cpu_arguments_are_refused_with_the_reason(tmp_path, args, message):
    with pytest.raises(ValueError, match=message):
        settings_from_args({"model_repository": str(_repository(tmp_path)), **args})


def test_a_broken_config_is_named_when_sizing(tmp_path):
    repo = _repository(tmp_path)
    (repo / "scores" / "config.pbtxt").write_text("instance_group [{ cuont: 1 }]\n")
    with pytest.raises(ValueError, match="model 'scores': failed to parse"):
        settings_from_args({"model_repository": str(repo), "num_cpus": "auto"})


@pytest.mark.parametrize("groups, need", [
    ("", (0.0, 0)),  # CPU instances only: no GPU
    ("instance_group [{ count: 1 kind: KIND_GPU }]", (0.5, 1)),  # no gpus list: the first GPU
    ("instance_group [{ count: 2 kind: KIND_GPU gpus: [0] }, { count: 1 kind: KIND_CPU }]", (1.0, 1)),
    ("instance_group [{ count: 1 kind: KIND_GPU gpus: [0, 1] }]", (1.0, 2)),  # one instance on each of two
    ("instance_group [{ count: 1 kind: KIND_GPU gpus: [2] }]", (0.5, 3)),  # device 2: the replica needs 3
])
def test_a_models_gpu_need_is_half_a_gpu_per_gpu_instance_on_the_devices_it_names(groups, need):
    assert model_gpus(_config(groups)) == need


def test_a_replica_shares_one_gpu_or_takes_whole_ones():
    assert replica_gpus([(0.5, 1), (0.25, 1)]) == 0.75  # one device: the fractions add up
    assert replica_gpus([(0.5, 1), (1.0, 1)]) == 1.0  # at most the one GPU
    assert replica_gpus([(0.5, 1), (1.0, 1)], models_per_replica=1) == 1.0  # multiplexed: the largest
    assert replica_gpus([(0.5, 1), (0.5, 2)]) == 2.0  # a model names devices 0 and 1: two whole GPUs
    assert replica_gpus([(0.0, 0), (0.0, 0)]) == 0.0


def test_num_gpus_auto_sizes_the_replicas_from_the_gpu_instances(tmp_path):
    repo = _repository(tmp_path)
    config = repo / "scores" / "config.pbtxt"
    config.write_text(config.read_text().replace("KIND_CPU", "KIND_GPU"))
    base = {"model_repository": str(repo), "num_gpus": "auto"}
    assert "KIND_GPU" in config.read_text()
    settings = settings_from_args(base)  # scores: one GPU instance; simple and doubler on the CPU
    assert settings.num_gpus == 0.5 and settings.model_options()["ray_actor_options"]["num_gpus"] == 0.5
    assert settings_from_args({**base, "gpu_per_instance": 0.25}).num_gpus == 0.25
    assert settings_from_args({**base, "serve_args": "--model-control-mode explicit --load-model simple"}).num_gpus == 0


@pytest.mark.parametrize("args, message", [
    ({"num_gpus": "lots"}, "num_gpus must be a number of GPUs or 'auto'"),
    ({"num_gpus": "0.5", "gpu_per_instance": 0.5}, "gpu_per_instance goes with num_gpus=auto"),
    ({"num_gpus": "auto", "gpu_per_instance": 2}, "gpu_per_instance must be more than 0 and at most 1"),
])
def test_bad_gpu_arguments_are_refused_with_the_reason(tmp_path, args, message):
    with pytest.raises(ValueError, match=message):
        settings_from_args({"model_repository": str(_repository(tmp_path)), **args})
