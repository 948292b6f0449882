"""Settings every service has: environment, reflection, logging, API keys,
TLS files and the shutdown grace. Each service's settings class adds its
own; values come from the environment, then `.env`.

One `.env` configures the pair, so each service also reads its names with
its own prefix (`METADATA_MAX_PAGE_SIZE`, `VECTOR_MAX_PAGE_SIZE`), which wins
over the plain name from the environment or `.env`. A plain name keeps
working in a service's own environment; in `.env`, a plain name that both
services define with a meaning of their own (PER_SERVICE_NAMES) is refused at
start-up, since it would silently change the other service too. The names in
SHARED_NAMES mean the same to both and stay plain.
"""

from __future__ import annotations

import enum
import hmac
import os
from typing import Any, ClassVar, Literal, Self

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, ValidationError
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from askmojo.common.filters import (
    DEFAULT_MAX_FILTER_CONDITIONS,
    DEFAULT_MAX_FILTER_VALUES,
    FILTER_CONDITIONS_CEILING,
    FILTER_VALUES_CEILING,
    FilterLimits,
)

# Settings both services define, each with its own meaning: refused plain in
# the shared `.env` (tests/unit/test_settings.py keeps this list equal to the
# fields the two settings classes have in common).
PER_SERVICE_NAMES = frozenset(
    {
        "MAX_CONCURRENT_RPCS",
        "MAX_FILTER_CONDITIONS",
        "MAX_FILTER_VALUES",
        "MAX_MESSAGE_BYTES",
        "MAX_METADATA_KEYS",
        "MAX_METADATA_STRING_BYTES",
        "MAX_PAGE_SIZE",
    }
)
# Settings of ServiceSettings itself: one meaning for the pair.
SHARED_NAMES = frozenset(
    {
        "ENVIRONMENT",
        "REFLECTION",
        "LOG_LEVEL",
        "LOG_FORMAT",
        # One `.env` for the pair: the same keys and certificate open both
        # (METADATA_API_KEY / VECTOR_API_KEY when they must differ).
        "API_KEY",
        "READ_ONLY_API_KEY",
        "ALLOW_UNAUTHENTICATED",
        "TLS_CERT_FILE",
        "TLS_KEY_FILE",
        "TLS_CLIENT_CA_FILE",
        "SHUTDOWN_GRACE_SECONDS",
    }
)


def api_key_problem(key: str) -> str | None:
    """Why `key` cannot be an API key, or None. Keys travel in an HTTP/2
    header (`authorization: Bearer <key>`): printable ASCII, and no spaces,
    which a copy from a file or a shell would silently lose or add."""
    if not key.strip():
        return "is empty: unset it for no key, or set a key (e.g. `openssl rand -hex 32`)"
    if any(not ("!" <= char <= "~") for char in key):
        return (
            "must be printable ASCII without spaces or line breaks (it is sent in a "
            "gRPC header); check for a stray space or newline"
        )
    return None


def invalid_settings_message(service: str, error: ValidationError) -> str:
    """What a service prints when its settings do not validate: one line per
    setting at fault, named as it is set (METADATA_PORT, not metadata_port),
    and never the value given (it may be a key)."""
    lines = []
    for problem in error.errors(include_input=False, include_url=False):
        name = ".".join(str(part) for part in problem["loc"]).upper() or "settings"
        message = str(problem["msg"]).removeprefix("Value error, ")
        lines.append(message if name in message else f"{name}: {message}")
    return "\n".join(f"{service}: invalid settings: {line}" for line in lines)


def _env_name(info: ValidationInfo) -> str:
    return (info.field_name or "API_KEY").upper()


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


class _PlainDotEnv(PydanticBaseSettingsSource):
    """The plain (unprefixed) names of `.env`, refusing the ambiguous ones."""

    def __init__(self, settings_cls: type[BaseSettings], dotenv: DotEnvSettingsSource) -> None:
        super().__init__(settings_cls)
        self._dotenv = dotenv

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._dotenv.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        ambiguous = sorted(
            (name.upper(), value)
            for name, value in self._dotenv.env_vars.items()
            if name.upper() in PER_SERVICE_NAMES and name.lower() in self.settings_cls.model_fields
        )
        if ambiguous:
            raise ValidationError.from_exception_data(
                self.settings_cls.__name__,
                [
                    {
                        "type": PydanticCustomError(
                            "ambiguous_setting",
                            "{name} in .env would set both services; write "
                            "METADATA_{name} and/or VECTOR_{name} instead",
                            {"name": name},
                        ),
                        "loc": (name,),
                        "input": value,
                    }
                    for name, value in ambiguous
                ],
            )
        return self._dotenv()


class ServiceSettings(BaseSettings):
    # hide_input_in_errors: a refused setting's error would otherwise print
    # its raw value, and a model-level one every value, API keys included.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, hide_input_in_errors=True
    )
    # "METADATA_" or "VECTOR_": the service's own names, which win.
    env_service_prefix: ClassVar[str] = ""

    environment: Environment = Environment.DEVELOPMENT
    # None: on in development, off in production.
    reflection: bool | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # None: "json" in production, "text" in development.
    log_format: Literal["json", "text"] | None = None
    # How wide a filter may be: conditions in the whole tree, and IN/NIN
    # values summed over it (askmojo.common.filters has the measured
    # ceilings). The metadata service's must not exceed the vector
    # service's: it checks when it first connects.
    max_filter_conditions: int = Field(
        default=DEFAULT_MAX_FILTER_CONDITIONS, ge=1, le=FILTER_CONDITIONS_CEILING
    )
    max_filter_values: int = Field(
        default=DEFAULT_MAX_FILTER_VALUES, ge=1, le=FILTER_VALUES_CEILING
    )

    # --- operation (DESIGN.md §9; askmojo.common.auth, .tls) ---
    # Full access. Unset: no key is asked for (development only, unless
    # ALLOW_UNAUTHENTICATED=true: production refuses to start without one).
    api_key: SecretStr | None = None
    # Reads only: Get*, List*, Search, Query, Count, Embed*, GetModelInfo,
    # GetStats and a dry-run Reconcile.
    read_only_api_key: SecretStr | None = None
    allow_unauthenticated: bool = False
    # Server TLS from PEM files, re-read when they change (short-lived mesh
    # certificates rotate without a restart). TLS_CLIENT_CA_FILE also asks
    # every client for a certificate signed by that CA (mTLS).
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    # SIGTERM: stop accepting, let in-flight RPCs finish for this long, give
    # leases back, stop workers, exit 0.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)

    # check_fields=False: VECTOR_SERVICE_API_KEY is the metadata service's
    # (MetadataSettings); every key either service reads is held to one rule.
    @field_validator("api_key", "read_only_api_key", "vector_service_api_key", check_fields=False)
    @classmethod
    def _usable_key(cls, key: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if key is not None:
            problem = api_key_problem(key.get_secret_value())
            if problem:
                raise PydanticCustomError(
                    "unusable_api_key",
                    "{name} {problem}",
                    {"name": _env_name(info), "problem": problem},
                )
        return key

    @model_validator(mode="after")
    def _keys_agree(self) -> Self:
        if self.read_only_api_key is None:
            return self
        if self.api_key is None:
            # Refused rather than guessed: enforcing the read key alone would
            # leave writes to no one, while not enforcing it would leave
            # everything open to anyone with a configuration that looks keyed.
            raise PydanticCustomError(
                "read_only_key_alone",
                "READ_ONLY_API_KEY is set without API_KEY: set API_KEY too (full access), "
                "or unset READ_ONLY_API_KEY",
            )
        if hmac.compare_digest(
            self.read_only_api_key.get_secret_value().encode(),
            self.api_key.get_secret_value().encode(),
        ):
            raise PydanticCustomError(
                "read_only_key_is_full_key",
                "READ_ONLY_API_KEY equals API_KEY, so every reader could write: give "
                "READ_ONLY_API_KEY a key of its own",
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        prefix = cls.env_service_prefix
        if not prefix or not isinstance(dotenv_settings, DotEnvSettingsSource):
            return init_settings, env_settings, dotenv_settings, file_secret_settings
        # Same file(s) as the plain source (a test's `_env_file=` included).
        prefixed_dotenv = DotEnvSettingsSource(
            settings_cls,
            env_file=dotenv_settings.env_file,
            env_file_encoding=dotenv_settings.env_file_encoding,
            env_prefix=prefix,
            # Only names of this class's fields: the default also returns
            # every other line of the file, unprefixed ones included.
            dotenv_filtering="only_existing",
        )
        return (
            init_settings,
            EnvSettingsSource(settings_cls, env_prefix=prefix),
            prefixed_dotenv,
            env_settings,
            _PlainDotEnv(settings_cls, dotenv_settings),
            file_secret_settings,
        )

    @property
    def filter_limits(self) -> FilterLimits:
        return FilterLimits(self.max_filter_conditions, self.max_filter_values)

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.PRODUCTION

    @property
    def reflection_enabled(self) -> bool:
        return (not self.is_production) if self.reflection is None else self.reflection

    @staticmethod
    def default_host(host: str | None, *, production: bool) -> str:
        """Where a service listens when its HOST is unset: every interface in
        production (a container), only this machine in development, so a
        laptop's service is never reachable from the network by accident."""
        if host:
            return host
        return "[::]" if production else "127.0.0.1"

    @property
    def effective_log_format(self) -> str:
        return self.log_format or ("json" if self.is_production else "text")
