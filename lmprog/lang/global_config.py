"""`sglang.lang.global_config` (SGLang's earlier home of the settings object)."""

from __future__ import annotations

from lmprog.global_config import GlobalConfig, global_config

__all__ = ["GlobalConfig", "global_config"]
