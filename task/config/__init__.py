"""The run configuration: every key declared once (task.config.fields.key), parsed once.

Sections: ``model prompt method loss train cache data`` (the ML run, task.config.core and
task.config.data) and ``server run client`` (the federated app, task.config.app). The key sets
other modules need are derived from the declarations here, never listed by hand.
"""

from task.config.app import (
    DP_MODES,
    GLOBAL_EVAL_MODES,
    ON_CORRUPT_MODES,
    AppConfig,
    ClientSection,
    RunSection,
    ServerConfig,
    apply_node_config,
    default_run_name,
    legacy_run_name,
)
from task.config.core import (
    CacheConfig,
    LossConfig,
    MethodConfig,
    ModelConfig,
    PromptConfig,
    RunConfig,
    TrainConfig,
)
from task.config.data import DataConfig, parse_cross
from task.config.fields import ConfigError, KeyInfo, Roles, key
from task.config.parse import (
    APP_SECTIONS,
    defaults,
    key_info,
    keys_where,
    parse_app_config,
    parse_run_config,
    reference_table,
    to_flat,
)

# May change between an interrupted run and its resumption (not part of its fingerprint).
RESUMABLE_KEYS = keys_where(resumable=True)
# Local paths the launcher makes absolute (the SuperLink may run in another directory).
PATH_KEYS = tuple(sorted(keys_where(path=True)))
# Vary within a report table or only say where things live: not part of a "setup".
NON_SETUP_KEYS = keys_where(setup=False)
# node-config key -> the run-config key it overrides on that SuperNode.
NODE_OVERRIDES = {info.roles.node: name for name, info in key_info().items() if info.roles.node}

__all__ = [
    "APP_SECTIONS",
    "DP_MODES",
    "GLOBAL_EVAL_MODES",
    "NODE_OVERRIDES",
    "NON_SETUP_KEYS",
    "ON_CORRUPT_MODES",
    "PATH_KEYS",
    "RESUMABLE_KEYS",
    "AppConfig",
    "CacheConfig",
    "ClientSection",
    "ConfigError",
    "DataConfig",
    "KeyInfo",
    "LossConfig",
    "MethodConfig",
    "ModelConfig",
    "PromptConfig",
    "Roles",
    "RunConfig",
    "RunSection",
    "ServerConfig",
    "TrainConfig",
    "apply_node_config",
    "default_run_name",
    "defaults",
    "key",
    "key_info",
    "keys_where",
    "legacy_run_name",
    "parse_app_config",
    "parse_cross",
    "parse_run_config",
    "reference_table",
    "to_flat",
]
