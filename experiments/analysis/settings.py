"""The pipeline's settings as the scripts see them.

The workflow writes its effective config (config/config.yaml plus any --config overrides) to
paper/generated/settings.json and passes that path to each script (`--settings`); run by hand, a
script reads config/config.yaml.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

CONFIG = Path("config/config.yaml")
MODELS = Path("config/models.yaml")
CLAIMS = Path("config/claims.yaml")


def load_settings(path: str | Path | None = None) -> dict:
    """The settings in `path` (JSON or YAML); config/config.yaml when None."""
    path = Path(path or CONFIG)
    with open(path) as f:
        return json.load(f) if path.suffix == ".json" else yaml.safe_load(f)


def git_repo(settings: dict) -> str | None:
    """Where raw rows' git_sha are looked up; None when the config turns the check off."""
    return "." if settings["check_git_sha"] else None


def load_models(path: str | Path = MODELS) -> dict[str, dict]:
    """Model name -> {hidden, ffn, experts, top_k} (config/models.yaml)."""
    with open(path) as f:
        return yaml.safe_load(f)
