"""Instance groups completed as Triton shows them, and each instance's threads: the cores shared
among CPU instances, and every core for an execution that runs alone."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from triserve.core import instances
from triserve.errors import ServerError


def completed(text: str) -> mc.ModelConfig:
    config = text_format.Parse('name: "m" ' + text, mc.ModelConfig())
    instances.complete_instance_groups(config)
    return config


def test_no_instance_group_is_two_cpu_instances_named_after_the_model():
    (group,) = completed("").instance_group
    assert (group.name, group.kind, group.count) == ("m", mc.ModelInstanceGroup.KIND_CPU, 2)


def test_too_many_instances_are_refused():
    with pytest.raises(ServerError, match="asks for 65 instances"):
        completed("instance_group { count: 65 kind: KIND_CPU }")


@pytest.mark.parametrize("cores, text, expected", [
    (2, "", [(1, 2), (1, 2)]),  # two single-threaded instances; alone, either runs on both cores
    (8, "", [(4, 8), (4, 8)]),
    (2, "instance_group { count: 1 kind: KIND_CPU }", [(2, 0)]),  # one instance already has every core
    (1, "", [(1, 0), (1, 0)]),
])
def test_cpu_instances_share_the_cores_and_widen_to_all_of_them_alone(monkeypatch, cores, text, expected):
    monkeypatch.setattr(instances, "cpu_count", lambda: cores)
    settings = instances.instance_settings(completed(text))
    assert [(s.threads, s.wide_threads) for s in settings] == expected
    assert {s.device for s in settings} == {"cpu"}


def test_gpu_instances_run_one_per_device_and_never_widen(monkeypatch):
    monkeypatch.setattr(instances, "cpu_count", lambda: 4)
    settings = instances.instance_settings(completed("instance_group { count: 1 kind: KIND_GPU gpus: [0, 1] }"))
    assert [(s.device, s.threads, s.wide_threads) for s in settings] == [("cuda:0", 1, 0), ("cuda:1", 1, 0)]
