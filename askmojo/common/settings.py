"""Settings every service has: environment, reflection, logging. Each
service's settings class adds its own; values come from the environment,
then `.env`."""

from __future__ import annotations

import enum
import os
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


def usable_cpus() -> int:
    """CPUs this process may run on: a container's cpuset or `taskset` limit,
    which os.cpu_count() ignores, so pools are not oversized."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Environment(enum.StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    environment: Environment = Environment.DEVELOPMENT
    # None: on in development, off in production.
    reflection: bool | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # None: "json" in production, "text" in development.
    log_format: Literal["json", "text"] | None = None

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.PRODUCTION

    @property
    def reflection_enabled(self) -> bool:
        return (not self.is_production) if self.reflection is None else self.reflection

    @property
    def effective_log_format(self) -> str:
        return self.log_format or ("json" if self.is_production else "text")
