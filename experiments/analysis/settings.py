"""The pipeline's settings as the scripts see them.

Snakemake passes its effective config (config/config.yaml plus any --config overrides) to each
script as JSON (`--settings`); run by hand, a script reads config/config.yaml.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

CONFIG = Path("config/config.yaml")
MODELS = Path("config/models.yaml")
CLAIMS = Path("config/claims.yaml")


def load_settings(settings_json: str | None = None, path: str | Path = CONFIG) -> dict:
    if settings_json:
        return json.loads(settings_json)
    with open(path) as f:
        return yaml.safe_load(f)


def git_repo(settings: dict) -> str | None:
    """Where raw rows' git_sha are looked up; None when the config turns the check off."""
    return "." if settings["check_git_sha"] else None


def load_models(path: str | Path = MODELS) -> dict[str, dict]:
    """Model name -> {hidden, ffn, experts, top_k} (config/models.yaml)."""
    with open(path) as f:
        return yaml.safe_load(f)
