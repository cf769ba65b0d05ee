"""triserve on Ray Serve (`pip install 'triserve[ray]'`).

    serve run triserve.integrations.ray:app model_repository=DIR [replicas=N | autoscale=MIN:MAX]
    triserve ray --address ADDR --model-repository DIR [--replicas N | --autoscale MIN:MAX]

`app` is a Serve app builder: Serve calls it with the `key=value` arguments (or a config file's
`args:`); see deployments.settings_from_args for the keys.
"""

from __future__ import annotations

from typing import Any


def app(args: dict[str, Any]) -> Any:
    """The Serve application for `args` (an app builder, for `serve run` and Serve config files)."""
    from triserve.integrations.ray.deployments import build, settings_from_args

    return build(settings_from_args(dict(args)))
