"""The schema registry (Apicurio): its data dir, its command line, and its entry in the stack's table.

Apicurio runs as a JVM with its settings as ``-D`` properties (no config file to keep in step), its
schemas in an H2 database under the data dir. With write authentication on (rscf/registry_security.py)
it listens on ``registry_internal`` behind its proxy (deploy/local/registry_proxy.py), which takes the
registry's port; without it, on the registry's port itself. Kept apart from deploy/local/services.py
so that each module stays readable (tests/unit/test_layering.py: ~400 lines).
"""

from __future__ import annotations

from pathlib import Path

from deploy.local import installed
from deploy.local.processes import Service, http_ok
from rscf import registry_security
from rscf.settings import SETTINGS

H, P = SETTINGS.host, SETTINGS.ports


def db_path() -> Path:
    """The H2 database's file prefix: schema ids must outlive a restart, or old records become undecodable."""
    return SETTINGS.paths.data / "registry" / "registry"


def prepare() -> None:
    db_path().parent.mkdir(parents=True, exist_ok=True)


def port() -> int:
    """Apicurio's own port: behind its proxy (deploy/local/registry_proxy.py) when writes take a token."""
    return P.registry_internal if SETTINGS.registry_auth else P.registry


def argv() -> list[str]:
    return [
        installed.registry_java(),
        "-Xms64m",
        "-Xmx384m",
        "-XX:+UseSerialGC",
        # a JVM out of heap keeps its port open and answers nothing; exiting lets supervisord restart it
        "-XX:+ExitOnOutOfMemoryError",
        f"-Dquarkus.http.host={H}",
        f"-Dquarkus.http.port={port()}",
        # the management interface (health, metrics) is always on in this build: keep it on loopback
        f"-Dquarkus.management.host={H}",
        f"-Dquarkus.management.port={P.registry_management}",
        # Persistent storage: schema ids must survive restarts or old Kafka records become undecodable.
        "-Dapicurio.storage.kind=sql",
        "-Dapicurio.storage.sql.kind=h2",
        f"-Dapicurio.datasource.url=jdbc:h2:file:{db_path()};DB_CLOSE_ON_EXIT=FALSE",
        "-Dapicurio.datasource.username=sa",
        "-Dapicurio.datasource.password=sa",
        "-Dapicurio.rest.deletion.artifact.enabled=true",
        "-Dapicurio.rest.deletion.artifact-version.enabled=true",
        "-Dapicurio.rest.deletion.group.enabled=true",
        *registry_security.registry_flags(),  # writes need a token signed by the stack's key; reads stay open
        "-jar",
        str(installed.apicurio_jar()),
    ]


def healthy() -> bool:
    """Apicurio itself answers (its own port, not the proxy's)."""
    return http_ok(f"{SETTINGS.registry_internal_url}/subjects")


SERVICE = Service(
    "registry",
    (port(), P.registry_management),
    argv,
    healthy,
    SETTINGS.registry_internal_url,
    prepare=prepare,
    start_timeout_s=120,
    startsecs=20,
)
