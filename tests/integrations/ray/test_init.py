"""The app builder (`serve run triserve.integrations.ray:app key=value ...`) and the Serve config
file in deploy/ray, checked by Ray Serve's own config schema; no cluster needed."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from triserve.integrations.ray import app

CONFIG = Path(__file__).parents[3] / "deploy" / "ray" / "serve_config.yaml"


def test_the_serve_config_file_passes_serves_schema_and_builds_the_app():
    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (application,) = config.applications
    assert application.import_path == "triserve.integrations.ray:app" and application.route_prefix == "/"
    built = app(application.args)
    models = built._bound_deployment.init_args[0]._bound_deployment  # Ingress.bind(models, retries)
    options = models._deployment_config
    assert options.autoscaling_config.min_replicas == 1 and options.autoscaling_config.max_replicas == 4
    assert options.max_ongoing_requests == 16
    assert models.init_args[0] == ["--model-repository", "/models", "--strict-readiness", "true"]


def test_the_builder_takes_serve_runs_string_arguments():
    built = app({"model_repository": "/m", "replicas": "2", "retries": "0"})
    ingress = built._bound_deployment
    assert ingress.init_args[1] == 0
    assert ingress.init_args[0]._bound_deployment._deployment_config.num_replicas == 2
