"""compose.yaml and the Dockerfile, checked against the code they deploy.

No Docker daemon is needed: every name the files use (settings, modules,
ports, services, health service names, paths) is checked against the real
thing, so renaming a setting or moving a module breaks a test here instead of
a deployment.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from askmojo.common.settings import ServiceSettings
from askmojo.common.targets import is_grpc_target, replica_addresses
from askmojo.metadata.v1 import metadata_service_pb2
from askmojo.vector.v1 import vector_service_pb2
from metadata_service.config import MetadataSettings
from vector_service.config import VectorSettings

ROOT = Path(__file__).resolve().parents[2]
# The settings class of the service each module runs.
SETTINGS: dict[str, type[ServiceSettings]] = {
    "metadata_service": MetadataSettings,
    "vector_service": VectorSettings,
}
PORT_SETTING = {"metadata_service": "metadata_port", "vector_service": "vector_port"}
HEALTH_SERVICE = {
    "metadata_service": metadata_service_pb2.DESCRIPTOR.services_by_name[
        "MetadataService"
    ].full_name,
    "vector_service": vector_service_pb2.DESCRIPTOR.services_by_name["VectorService"].full_name,
}
METRICS_PORT_SETTING = {
    "metadata_service": "metadata_metrics_port",
    "vector_service": "vector_metrics_port",
}
POSTGRES_PORT = 5432
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"
# ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?-)([^}]*)|(:?\?)([^}]*))?\}")
# What a required variable (`${VAR:?...}`, which compose refuses to start
# without) stands for here: some value the operator set.
REQUIRED_VALUE = "set-by-the-operator"


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` with the default, as on a machine that sets
    none of the variables; a required `${VAR:?message}` as REQUIRED_VALUE."""

    def default(match: re.Match[str]) -> str:
        if match.group(4) is not None:
            return REQUIRED_VALUE
        assert match.group(3) is not None, f"${{{match.group(1)}}} has no default"
        return match.group(3)

    return _VARIABLE.sub(default, value)


def load_compose() -> dict[str, Any]:
    # safe_load resolves the file's anchors and `<<` merge keys as compose does.
    document = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(document, dict)
    return document


COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def as_argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def python_module(argv: list[str]) -> str | None:
    """X of `python -m X ...`."""
    if len(argv) >= 3 and argv[0] in ("python", "python3") and argv[1] == "-m":
        return argv[2]
    return None


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), comment lines dropped and continuations joined
    as Docker does."""
    lines = [
        line
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_cmd() -> list[str]:
    cmds = [json.loads(args) for keyword, args in dockerfile_instructions() if keyword == "CMD"]
    assert len(cmds) == 1, "exactly one CMD, in exec (JSON) form"
    return [str(a) for a in cmds[0]]


def module_of(service: dict[str, Any]) -> str | None:
    """The Python module a compose service runs (its command, or the image's CMD)."""
    if "command" in service:
        return python_module(as_argv(service["command"]))
    if "build" in service:
        return python_module(dockerfile_cmd())
    return None


OURS = {name: s for name, s in SERVICES.items() if module_of(s) in SETTINGS}


def raw_environment(service: dict[str, Any]) -> dict[str, str | None]:
    """As written; None for a key without a value (passed through from the
    shell or .env when set there, else unset in the container)."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = {
            item.split("=", 1)[0]: (item.split("=", 1)[1] if "=" in item else None) for item in env
        }
    return {str(k): (None if v is None else str(v)) for k, v in env.items()}


def environment(service: dict[str, Any]) -> dict[str, str]:
    """The values the container gets on a machine that sets no variable."""
    return {k: interpolate(v) for k, v in raw_environment(service).items() if v is not None}


def effective_port(service: dict[str, Any], settings: dict[str, str] = PORT_SETTING) -> int:
    """The service's port setting (or, with METRICS_PORT_SETTING, its metrics port)."""
    module = module_of(service)
    assert module is not None
    field = settings[module]
    given = environment(service).get(field.upper())
    default = SETTINGS[module].model_fields[field].default
    return int(given) if given is not None else int(default)


def container_ports(service: dict[str, Any]) -> list[int]:
    ports = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.append(int(entry["target"]))
        else:
            ports.append(int(str(entry).rsplit(":", 1)[-1].split("/")[0]))
    return ports


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    argv = as_argv(test)
    assert argv[0] in ("CMD", "CMD-SHELL"), argv
    return argv[1:] if argv[0] == "CMD" else shlex.split(argv[1])


def profiles(service: dict[str, Any]) -> set[str]:
    return set(service.get("profiles", []))


def replicas(service: dict[str, Any]) -> int:
    return int(service.get("deploy", {}).get("replicas", 1))


def host_ports(entry: object) -> list[int]:
    """The host ports of a `ports:` entry ("50051-50052:50051" gives two)."""
    if isinstance(entry, dict):
        published = str(entry.get("published", ""))
    else:
        parts = str(entry).split(":")
        published = parts[-2] if len(parts) >= 2 else ""
    if not published:
        return []
    first, _, last = published.partition("-")
    return list(range(int(first), int(last or first) + 1))


def address_hosts(address: str) -> list[tuple[str, int]]:
    """(host, port) of each backend an address names: the entries of a
    list, or the name a `dns:` target resolves."""
    found = []
    for entry in replica_addresses(address):
        backend = entry
        if is_grpc_target(entry):
            scheme, _, rest = entry.partition(":")
            assert scheme == "dns", f"{entry}: compose services are found by DNS"
            backend = rest.lstrip("/").rpartition("/")[2]  # dns://[authority]/host:port
        host, _, port = backend.rpartition(":")
        found.append((host, int(port)))
    return found


# --- compose.yaml --------------------------------------------------------------


def test_compose_runs_the_scaled_out_shape_and_an_optional_sqlite() -> None:
    assert {"metadata", "vector", "chroma", "postgres", "metadata-sqlite", "prometheus"} <= set(
        SERVICES
    )
    assert module_of(SERVICES["metadata"]) == "metadata_service"
    assert module_of(SERVICES["metadata-sqlite"]) == "metadata_service"
    assert module_of(SERVICES["vector"]) == "vector_service"
    # `docker compose up` starts the scaled-out shape (issue #13): PostgreSQL,
    # a Chroma server, 2 metadata and 2 vector replicas; SQLite on request.
    for name in ("metadata", "vector", "chroma", "postgres"):
        assert not profiles(SERVICES[name]), name
    assert profiles(SERVICES["metadata-sqlite"]) == {"sqlite"}
    assert replicas(SERVICES["metadata"]) == 2
    assert replicas(SERVICES["vector"]) == 2


@pytest.mark.parametrize("name", sorted(OURS))
def test_replicas_share_only_engines_that_allow_it(name: str) -> None:
    """A replicated service stores nothing of its own: the metadata side on
    a database server (a SQLite file belongs to one host), the vector side
    on the Chroma server (an embedded store has one owner: its lock)."""
    service = OURS[name]
    if replicas(service) == 1:
        return
    env = environment(service)
    if module_of(service) == "metadata_service":
        assert make_url(env["DATABASE_URL"]).get_backend_name() == "postgresql", name
    else:
        assert env.get("CHROMA_HOST"), name
    assert "container_name" not in service, f"{name}: replicas need compose's own names"
    assert not service.get("volumes"), f"{name}: replicas share no volume"


@pytest.mark.parametrize("name", sorted(OURS))
def test_each_published_replica_has_a_host_port(name: str) -> None:
    service = OURS[name]
    for entry in service.get("ports", []):
        ports = host_ports(entry)
        assert len(ports) >= replicas(service), (
            f"{name}: {replicas(service)} replicas need as many host ports, got {entry!r}"
        )


def test_our_services_build_this_repository() -> None:
    assert set(OURS) == {"metadata", "vector", "metadata-sqlite"}
    for name, service in OURS.items():
        assert service["build"] == ".", name
        assert (ROOT / "Dockerfile").is_file()


def test_chroma_server_matches_the_pinned_client() -> None:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [p for p in pins if p.startswith("chromadb==")]
    version = pin.removeprefix("chromadb==")
    assert importlib.metadata.version("chromadb") == version
    assert SERVICES["chroma"]["image"] == f"chromadb/chroma:{version}"


@pytest.mark.parametrize("name", sorted(OURS))
def test_environment_keys_are_settings_of_the_service(name: str) -> None:
    service = OURS[name]
    module = module_of(service)
    assert module is not None
    settings_class = SETTINGS[module]
    env = environment(service)
    known = {field.upper() for field in settings_class.model_fields}
    unknown = set(raw_environment(service)) - known
    assert not unknown, f"{name}: {sorted(unknown)} are not {settings_class.__name__} fields"
    # And the values validate (a typo such as WORKERS: four fails here);
    # model_validate reads neither the environment nor a .env file.
    settings = settings_class.model_validate({k.lower(): v for k, v in env.items()})
    assert settings.environment.value == "production", name


def test_metadata_service_settings() -> None:
    env = environment(SERVICES["metadata"])
    assert env["WORKERS"] == "4"
    assert env["VECTOR_SERVICE_ADDRESS"] == "dns:///vector:50052"
    assert make_url(env["DATABASE_URL"]).drivername == "postgresql+psycopg"
    sqlite_env = environment(SERVICES["metadata-sqlite"])
    assert make_url(sqlite_env["DATABASE_URL"]).get_backend_name() == "sqlite"
    # Everything but the database is the same service.
    assert {k: v for k, v in sqlite_env.items() if k != "DATABASE_URL"} == {
        k: v for k, v in env.items() if k != "DATABASE_URL"
    }


@pytest.mark.parametrize("name", sorted(OURS))
def test_ports_match_the_settings(name: str) -> None:
    service = OURS[name]
    port = effective_port(service)
    # Only the metadata service is reachable from outside: the vector service
    # (every collection's vectors, readable and writable with the pair's key)
    # and the metrics endpoints stay on the compose network.
    published = [port] if module_of(service) == "metadata_service" else []
    assert container_ports(service) == published
    argv = healthcheck_argv(service)
    assert python_module(argv) == "askmojo.healthcheck"
    address, health_service = argv[3], argv[4]
    assert urlsplit(f"//{address}").port == port
    module = module_of(service)
    assert module is not None
    assert health_service == HEALTH_SERVICE[module]


def test_published_host_ports_do_not_collide() -> None:
    published = [
        port
        for service in SERVICES.values()
        for entry in service.get("ports", [])
        for port in host_ports(entry)
    ]
    assert len(published) == len(set(published)), published


def test_vector_service_address_names_every_vector_replica() -> None:
    """Every backend VECTOR_SERVICE_ADDRESS names is a vector service of this
    file on its port, and every vector service `docker compose up` starts is
    named (a list of named services, or a `dns:///` name whose replicas
    compose's DNS returns)."""
    vector_services = {
        name
        for name, service in OURS.items()
        if module_of(service) == "vector_service" and not profiles(service)
    }
    for name, service in OURS.items():
        if module_of(service) != "metadata_service":
            continue
        address = environment(service)["VECTOR_SERVICE_ADDRESS"]
        # The setting's own check: what the service would refuse at start.
        MetadataSettings.model_validate({"vector_service_address": address})
        backends = address_hosts(address)
        for host, port in backends:
            assert host in OURS and module_of(OURS[host]) == "vector_service", (name, host)
            assert port == effective_port(OURS[host]), (name, host)
        assert {host for host, _ in backends} == vector_services, name
        if len(backends) == 1 and replicas(OURS[backends[0][0]]) > 1:
            # One name over several replicas: only a dns: target sees them all.
            assert address.startswith("dns:"), (name, address)


def test_chroma_host_and_port_name_the_chroma_server() -> None:
    env = environment(SERVICES["vector"])
    assert env["CHROMA_HOST"] == "chroma"
    port = int(env.get("CHROMA_PORT", VectorSettings.model_fields["chroma_port"].default))
    # The port the server's own health check uses is the port it listens on.
    (url,) = [a for a in healthcheck_argv(SERVICES["chroma"]) if a.startswith("http")]
    assert urlsplit(url).port == port
    assert urlsplit(url).path == "/api/v2/heartbeat"


def test_sqlite_database_lives_on_a_volume() -> None:
    service = SERVICES["metadata-sqlite"]
    database = make_url(environment(service)["DATABASE_URL"]).database
    assert database is not None and database.startswith("/")
    targets = {str(v).split(":")[1] for v in service["volumes"]}
    assert str(Path(database).parent) in targets


def test_postgres_url_matches_the_postgres_service() -> None:
    url = make_url(environment(SERVICES["metadata"])["DATABASE_URL"])
    postgres = SERVICES["postgres"]
    env = environment(postgres)
    assert url.host == "postgres"
    assert url.port == POSTGRES_PORT
    assert (url.username, url.password, url.database) == (
        env["POSTGRES_USER"],
        env["POSTGRES_PASSWORD"],
        env["POSTGRES_DB"],
    )
    assert profiles(postgres) == profiles(SERVICES["metadata"])


@pytest.mark.parametrize("name", sorted(OURS))
def test_both_services_require_the_api_key(name: str) -> None:
    """Production refuses to start without API_KEY; compose refuses even
    earlier, with a message, when .env does not set it. The read-only key is
    passed on only when set (an empty key must never be configured)."""
    raw = raw_environment(OURS[name])
    assert raw["API_KEY"] == "${API_KEY:?set API_KEY in .env}"
    assert raw["READ_ONLY_API_KEY"] is None
    assert "ALLOW_UNAUTHENTICATED" not in raw
    # The metadata service calls the vector service with API_KEY (its
    # VECTOR_SERVICE_API_KEY falls back to it): one key for the pair.
    assert "VECTOR_SERVICE_API_KEY" not in raw


@pytest.mark.parametrize("name", sorted(OURS))
def test_metrics_ports_are_on(name: str) -> None:
    service = OURS[name]
    metrics_port = effective_port(service, METRICS_PORT_SETTING)
    assert metrics_port != 0
    assert metrics_port != effective_port(service)
    assert metrics_port not in container_ports(service)


def prometheus_targets() -> dict[str, list[str]]:
    """HOST:PORT each job scrapes: static targets, and DNS names (type A:
    every replica behind the name) with their port."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets: dict[str, list[str]] = {}
    for job in config["scrape_configs"]:
        found = [t for static in job.get("static_configs", []) for t in static["targets"]]
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type", "SRV") == "A", "compose's DNS answers A records"
            found += [f"{name}:{dns['port']}" for name in dns["names"]]
        targets[job["job_name"]] = found
    return targets


def test_prometheus_scrapes_both_services_on_their_metrics_ports() -> None:
    scraped: set[str] = set()
    for job, targets in prometheus_targets().items():
        for target in targets:
            host, port = target.rsplit(":", 1)
            assert host in OURS, (job, target)
            assert int(port) == effective_port(OURS[host], METRICS_PORT_SETTING), (job, target)
            scraped.add(host)
    # Every service `docker compose up` starts (metadata-pg is optional).
    assert scraped == {name for name, service in OURS.items() if not profiles(service)}


def test_prometheus_service_reads_the_config() -> None:
    service = SERVICES["prometheus"]
    assert str(service["image"]).startswith("prom/prometheus:")
    assert not profiles(service)
    mounts = {str(v).split(":")[0]: str(v).split(":")[1] for v in service["volumes"]}
    # The image's default --config.file.
    assert mounts["./deploy/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert PROMETHEUS_CONFIG.is_file()


def test_grafana_provisions_the_dashboard_and_prometheus() -> None:
    service = SERVICES["grafana"]
    assert profiles(service) == {"grafana"}
    mounts = {str(v).split(":")[0]: str(v).split(":")[1] for v in service["volumes"]}
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus"
    assert [f"{url.port}"] == [str(p).rsplit(":", 1)[-1] for p in SERVICES["prometheus"]["ports"]]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "askmojo.yml").read_text())[
        "providers"
    ]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    dashboards = list((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        assert dashboard["panels"], path
        assert dashboard["templating"]["list"][0]["query"] == datasource["type"]


def test_start_up_waits_for_health() -> None:
    expected = {
        "vector": {"chroma"},
        "metadata": {"vector", "postgres"},
        "metadata-sqlite": {"vector"},
    }
    for name, dependencies in expected.items():
        depends_on = SERVICES[name]["depends_on"]
        assert set(depends_on) == dependencies, name
        for dependency, condition in depends_on.items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
            assert "healthcheck" in SERVICES[dependency], dependency


def test_named_volumes_are_declared() -> None:
    declared = set(COMPOSE.get("volumes", {}))
    used = {
        str(v).split(":")[0]
        for service in SERVICES.values()
        for v in service.get("volumes", [])
        if not str(v).startswith((".", "/"))
    }
    assert used == declared


def test_every_command_runs_an_existing_module() -> None:
    for name, service in SERVICES.items():
        commands = []
        if "command" in service:
            commands.append(as_argv(service["command"]))
        if "healthcheck" in service:
            commands.append(healthcheck_argv(service))
        for argv in commands:
            module = python_module(argv)
            if argv[0].startswith("python"):
                assert module is not None, (name, argv)
            if module is not None:
                assert importlib.util.find_spec(module) is not None, (name, module)


# --- Dockerfile --------------------------------------------------------------


def test_dockerfile_base_user_and_offline_model() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    env: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    assert env["HF_HUB_OFFLINE"] == "1"
    # Settings the image presets are real ones; the rest configure Python and pip.
    known = {f.upper() for cls in SETTINGS.values() for f in cls.model_fields}
    others = {k for k in env if k not in known}
    assert all(k.startswith(("PYTHON", "PIP_", "HF_", "TRANSFORMERS_")) for k in others), others


def test_dockerfile_installs_the_cpu_torch_wheel() -> None:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.13.0" in pins
    runs = " ".join(args for keyword, args in dockerfile_instructions() if keyword == "RUN")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in runs


def test_dockerfile_cmd_runs_a_service_module() -> None:
    module = python_module(dockerfile_cmd())
    assert module in SETTINGS
    assert importlib.util.find_spec(f"{module}.__main__") is not None
    assert not [k for k, _ in dockerfile_instructions() if k == "ENTRYPOINT"]


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerfile_copies_files_that_exist_and_reach_the_build() -> None:
    sources = []
    for keyword, args in dockerfile_instructions():
        if keyword in ("COPY", "ADD"):
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            assert not args.startswith("--from"), "no multi-stage copies expected"
            sources.extend(parts[:-1])
    assert {"pyproject.toml", "README.md", "askmojo", "metadata_service", "vector_service"} <= set(
        sources
    )
    patterns = dockerignore_patterns()
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not any(fnmatch.fnmatch(source, p) for p in patterns), (
            f".dockerignore drops {source}"
        )
