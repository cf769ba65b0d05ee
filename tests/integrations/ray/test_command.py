"""`triserve ray`'s flags: refused with the reason (exit 2) before any cluster is touched. The
command against a running cluster is in test_deployments (it needs one)."""

from __future__ import annotations

import pytest

from triserve.cli import main


@pytest.mark.parametrize("flags, message", [
    (["--model-repository", "/m", "--autoscale", "3:1"], "MIN:MAX"),
    ([], "--model-repository DIR"),
    (["--model-repository", "/m", "--replicas", "0"], "at least 1"),
    (["--model-repository", "/m", "--retries", "-1"], "at least 0"),
])
def test_bad_flags_are_refused_before_touching_a_cluster(flags, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["ray", "--address", "127.0.0.1:1", *flags])
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_replicas_and_autoscale_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["ray", "--address", "a:1", "--model-repository", "/m", "--replicas", "2", "--autoscale", "1:2"])
    assert exit.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
