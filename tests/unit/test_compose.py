"""``docker-compose.yml`` (the brokers and stores for users) agrees with sagaz's defaults.

CI has no Docker engine, so nothing here starts a container: the file is read as YAML and
compared with ``TriggerConfig``'s defaults and with the ``SAGAZ_*`` variables that the README,
the docs and the file itself tell users to set.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from sagaz.config import TriggerConfig
from sagaz.storage.url import store_from_url

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
README = ROOT / "README.md"
LOCAL_SERVICES = ROOT / "docs" / "operations" / "local-services.md"

SERVICES = {"kafka", "rabbitmq", "redis", "postgres", "sqs"}
#: ``export SAGAZ_X=value`` (or ``SAGAZ_X=value``) at the start of a line, a comment's too
ASSIGNMENT = re.compile(r"^[#\s]*(?:export\s+)?(SAGAZ_[A-Z0-9_]+)=(\S+)", re.MULTILINE)


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


def published(name: str) -> set[int]:
    """The host ports of a service (``"127.0.0.1:9092:9092"`` → 9092)."""
    ports = set()
    for entry in service(name).get("ports", []):
        host, container = str(entry).rsplit(":", 2)[-2:]
        assert host == container, f"{name}: publish {container} on the same host port"
        ports.add(int(host))
    return ports


def assignments(path: Path) -> dict[str, str]:
    found = ASSIGNMENT.findall(path.read_text())
    variables = dict(found)
    assert len(variables) == len(found), f"{path.name} sets a variable twice"
    return variables


def port(url: str, default: int) -> int:
    return urlsplit(url if "://" in url else f"//{url}").port or default


def test_the_file_has_each_service_with_a_health_check() -> None:
    services = compose()["services"]
    assert set(services) == SERVICES
    for name, spec in services.items():
        check = spec.get("healthcheck", {}).get("test")
        assert check and check[0] in ("CMD", "CMD-SHELL"), f"{name} has no health check"
        assert ":" in spec["image"], f"{name}: pin the image's tag"


def test_the_services_listen_on_the_ports_the_defaults_expect() -> None:
    config = TriggerConfig()
    assert published("kafka") == {port(config.kafka_bootstrap_servers, 9092)}
    assert published("rabbitmq") == {port(config.rabbitmq_url, 5672), 15672}  # + management
    assert published("redis") == {port(config.redis_url, 6379)}
    assert published("postgres") == {5432}
    assert published("sqs") == {9324}


def test_kafka_advertises_the_default_bootstrap_address() -> None:
    kafka = service("kafka")["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller", "KRaft, one node"
    advertised = kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    default = TriggerConfig().kafka_bootstrap_servers
    assert any(listener.endswith(f"://{default}") for listener in advertised)
    assert kafka.get("CLUSTER_ID"), "the image refuses KRaft mode without CLUSTER_ID"


@pytest.mark.parametrize("path", [README, LOCAL_SERVICES, COMPOSE], ids=lambda p: p.name)
def test_the_variables_shown_point_at_the_services(path: Path) -> None:
    shown = assignments(path)
    config = TriggerConfig()
    assert set(shown) == {
        "SAGAZ_STORE_URL",
        "SAGAZ_KAFKA_BOOTSTRAP_SERVERS",
        "SAGAZ_RABBITMQ_URL",
        "SAGAZ_REDIS_URL",
        "SAGAZ_SQS_ENDPOINT_URL",
    }
    # the brokers' addresses are TriggerConfig's defaults: the file serves them as they are
    assert shown["SAGAZ_KAFKA_BOOTSTRAP_SERVERS"] == config.kafka_bootstrap_servers
    assert shown["SAGAZ_RABBITMQ_URL"] == config.rabbitmq_url
    assert shown["SAGAZ_REDIS_URL"] == config.redis_url
    sqs = urlsplit(shown["SAGAZ_SQS_ENDPOINT_URL"])
    assert (sqs.scheme, sqs.hostname) == ("http", "localhost")
    assert {sqs.port} == published("sqs")
    # the store URL logs into the PostgreSQL of the file
    store = urlsplit(shown["SAGAZ_STORE_URL"])
    postgres = service("postgres")["environment"]
    assert store.scheme == "postgresql"
    assert (store.username, store.password) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
    )
    assert (store.hostname, store.port) == ("localhost", 5432)
    assert store.path == f"/{postgres['POSTGRES_DB']}"
    assert type(store_from_url(shown["SAGAZ_STORE_URL"])).__name__ == "PostgresSagaStore"
    # RabbitMQ runs with its default guest user, which the default URL logs in as
    assert "RABBITMQ_DEFAULT_USER" not in (service("rabbitmq").get("environment") or {})
    assert urlsplit(config.rabbitmq_url).username == "guest"


def test_readme_and_docs_show_the_same_variables() -> None:
    assert assignments(README) == assignments(LOCAL_SERVICES) == assignments(COMPOSE)
    assert "docker compose up -d" in README.read_text()
    assert "docker compose up -d" in LOCAL_SERVICES.read_text()


def read_by_code() -> set[str]:
    """The ``"SAGAZ_..."`` names the code and the test suite read (``os.environ.get(...)``)."""
    found: set[str] = set()
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        if path.resolve() == Path(__file__).resolve():  # names it checks, not reads
            continue
        found.update(re.findall(r"[\"'](SAGAZ_[A-Z0-9_]+)[\"']", path.read_text()))
    return found


def test_every_sagaz_variable_the_docs_name_exists() -> None:
    """A ``SAGAZ_*`` name in the README or the docs is one sagaz reads: a TriggerConfig field,
    or a name the code reads itself (``SAGAZ_STORE_URL``, the test suite's variables)."""
    prefix = str(TriggerConfig.model_config.get("env_prefix", "")).upper()
    assert prefix == "SAGAZ_"
    known = {prefix + name.upper() for name in TriggerConfig.model_fields} | read_by_code()
    assert "SAGAZ_STORE_URL" in known
    pages = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
    unknown = set()
    for page in pages:
        for name in re.findall(r"SAGAZ_[A-Z0-9_]*[A-Z0-9]_?", page.read_text()):
            if name.endswith("_"):  # "SAGAZ_WEBHOOK_...": a prefix of some variable
                if not any(variable.startswith(name) for variable in known):
                    unknown.add(f"{page.name}: {name}")
            elif name not in known:
                unknown.add(f"{page.name}: {name}")
    assert not unknown, f"variables sagaz does not read: {sorted(unknown)}"
