"""The local Kafka broker's config: single-node KRaft (broker + controller) on loopback, formatted once,
with SASL/SCRAM and the StandardAuthorizer when the data dir's mode is ``scram`` (rscf/kafka_security.py),
and a second client listener with TLS (SASL_SSL; SSL on a ``none`` broker) whose certificate the stack's
CA signs. server.properties is rendered at every `rscf up` and KRaft's format pins no listener, so a data
dir from before the TLS listener gets it at its next start."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from deploy.local import installed
from deploy.local.monitoring import issue_certificate  # the stack CA's certificates
from deploy.local.processes import StackError, port_in_use
from rscf import kafka_security
from rscf.kafka_clients import admin_client
from rscf.monitoring_security import ClientCert
from rscf.secrets import load_or_create, random_token, secrets_dir, write_private
from rscf.settings import SETTINGS

D = SETTINGS.paths.data
H = SETTINGS.host
P = SETTINGS.ports


def kafka_dir() -> Path:
    return D / "kafka"


@dataclass(frozen=True)
class TlsStore:
    """The TLS listener's PEM key store (key + certificate chain) and trust store (the CA)."""

    keystore: Path
    truststore: Path


def _tls_lines(listener: str, tls: TlsStore) -> str:
    """The TLS listener's SSL settings (PEM stores: Kafka reads them as they are, no keytool)."""
    pre = f"listener.name.{listener.lower()}."
    return f"""{pre}ssl.keystore.type=PEM
{pre}ssl.keystore.location={tls.keystore}
{pre}ssl.truststore.type=PEM
{pre}ssl.truststore.location={tls.truststore}
{pre}ssl.enabled.protocols=TLSv1.3,TLSv1.2
{pre}ssl.client.auth=none
"""


def _kafka_listeners(mode: str, tls: TlsStore) -> str:
    """Listener lines of server.properties. With SCRAM (rscf/kafka_security.py): both client listeners
    (SASL_PLAINTEXT on RSCF_KAFKA_PORT, SASL_SSL on RSCF_KAFKA_TLS_PORT) take SCRAM-SHA-512 only; the
    controller listener (the broker's own link to its controller) takes PLAIN with one static user, as
    KRaft controllers cannot check SCRAM (it lives in the metadata they serve); the StandardAuthorizer
    refuses what no ACL allows, whichever listener; the admin is the super user. A third client listener,
    CHAOS (as the plain one), advertises the fault proxy's port (`Ports.kafka_chaos`)."""
    if mode == kafka_security.NONE:
        return f"""listeners=PLAINTEXT://{H}:{P.kafka},SSL://{H}:{P.kafka_tls},CONTROLLER://{H}:{P.kafka_controller},CHAOS://{H}:{P.kafka_chaos}
advertised.listeners=PLAINTEXT://{H}:{P.kafka},SSL://{H}:{P.kafka_tls},CHAOS://{H}:{P.kafka_chaos_proxy}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,CHAOS:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
{_tls_lines("SSL", tls)}"""
    admin, ks = kafka_security.ADMIN, kafka_security
    internal = load_or_create("kafka_controller_password", lambda: random_token(24), SETTINGS.paths.secrets).decode()
    scram_jaas = f'{ks.SCRAM_LOGIN_MODULE} required username="{admin}" password="{ks.password(admin)}";'
    return f"""listeners=SASL_PLAINTEXT://{H}:{P.kafka},SASL_SSL://{H}:{P.kafka_tls},CONTROLLER://{H}:{P.kafka_controller},CHAOS://{H}:{P.kafka_chaos}
advertised.listeners=SASL_PLAINTEXT://{H}:{P.kafka},SASL_SSL://{H}:{P.kafka_tls},CHAOS://{H}:{P.kafka_chaos_proxy}
listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,CHAOS:SASL_PLAINTEXT
inter.broker.listener.name=SASL_PLAINTEXT
sasl.enabled.mechanisms={ks.MECHANISM}
sasl.mechanism.inter.broker.protocol={ks.MECHANISM}
listener.name.sasl_plaintext.{ks.MECHANISM.lower()}.sasl.jaas.config={scram_jaas}
listener.name.sasl_ssl.{ks.MECHANISM.lower()}.sasl.jaas.config={scram_jaas}
listener.name.chaos.{ks.MECHANISM.lower()}.sasl.jaas.config={scram_jaas}
{_tls_lines("SASL_SSL", tls)}sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required \
  username="{admin}" password="{internal}" user_{admin}="{internal}";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:{admin}
"""


def _kafka_mode() -> str:
    """The data dir's mode; asking for another one (RSCF_KAFKA_AUTH) on a formatted broker is an error."""
    recorded = kafka_security.recorded_mode()
    asked = os.environ.get("RSCF_KAFKA_AUTH", "").strip().lower()  # only when said (rscf/settings.py KafkaAuth)
    if recorded and asked and asked != recorded:
        raise StackError(f"kafka: this data dir's broker was formatted with RSCF_KAFKA_AUTH={recorded}, not {asked}: "
                         f"unset RSCF_KAFKA_AUTH, or use a new RSCF_DATA_DIR for a stack with {asked}")
    return recorded or kafka_security.requested_mode(SETTINGS.kafka_auth.new_broker_mode)


def _scram_format_arg(principal: str) -> str:
    """StorageTool's --add-scram value with a salted password (PBKDF2, as Kafka's ScramFormatter), so the
    password itself is never on a command line."""
    salt, iterations = os.urandom(24), 4096
    salted = hashlib.pbkdf2_hmac("sha512", kafka_security.password(principal).encode(), salt, iterations)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return (f'{kafka_security.MECHANISM}=[name={principal},iterations={iterations},'
            f'salt="{b64(salt)}",saltedpassword="{b64(salted)}"]')


def ensure_tls_store() -> TlsStore:
    """The broker's certificate (SAN 127.0.0.1 and localhost) from the stack's CA, issued or renewed by
    the monitoring's helper, and its PEM key store: the key (unencrypted PKCS#8, as the key file itself:
    Kafka 4.1 takes it without ssl.key.password, and a file password would sit next to it), the
    certificate and the CA, 0600 under <data>/secrets/kafka-tls; rewritten at every start."""
    from gateway.tls import ensure_ca

    ca_cert, ca_key = ensure_ca()
    base = secrets_dir(kafka_security.tls_dir())
    leaf = ClientCert("kafka-broker", base / "broker.pem", base / "broker.key")
    issue_certificate("kafka-broker", True, ca_cert, ca_key, leaf)
    store = TlsStore(base / "keystore.pem", kafka_security.ca_file())
    write_private(store.keystore, leaf.key.read_bytes() + leaf.cert.read_bytes() + store.truststore.read_bytes())
    return store


def prepare_kafka() -> None:
    conf = kafka_dir()
    (conf / "data").mkdir(parents=True, exist_ok=True)
    mode = _kafka_mode()
    tls = ensure_tls_store()
    props = f"""# generated by rscf: single-node KRaft broker+controller on loopback (RSCF_KAFKA_AUTH={mode})
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers={H}:{P.kafka_controller}
{_kafka_listeners(mode, tls)}controller.listener.names=CONTROLLER
log.dirs={conf / 'data'}
num.partitions={SETTINGS.topics.partitions}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# workers may ask for session timeouts down to 2 s (RSCF_WORKER_SESSION_TIMEOUT_MS; default 3 s; 6 s is the
# broker's default minimum): a killed replica's partitions wait about that long
group.min.session.timeout.ms=2000
auto.create.topics.enable=true
log.retention.hours=72
# 2-core machine: the defaults (3 network, 8 I/O, 10 background threads) only add context switches
num.network.threads=2
num.io.threads=2
background.threads=2
"""
    write_private(conf / "server.properties", props.encode())  # 0600: it holds the broker's passwords
    # WARN: the log (never rotated, see supervision.py) keeps why the broker failed or exited, not the INFO
    # chatter of every partition load and group rebalance
    (conf / "log4j2.properties").write_text(
        "rootLogger.level = WARN\nrootLogger.appenderRef.stdout.ref = STDOUT\n"
        "appender.stdout.type = Console\nappender.stdout.name = STDOUT\n"
        "appender.stdout.layout.type = PatternLayout\n"
        "appender.stdout.layout.pattern = [%d] %p %m (%c)%n\n"
        "logger.kafka.name = kafka\nlogger.kafka.level = WARN\n"
        "logger.state.name = state.change.logger\nlogger.state.level = WARN\n"
    )
    if not (conf / "data" / "meta.properties").exists():
        cluster_id = "-"
        while cluster_id.startswith("-"):  # `-t -x...` reads as a missing value (1 in 64; as Kafka's Uuid does)
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        scram = [] if mode == kafka_security.NONE else ["--add-scram", _scram_format_arg(kafka_security.ADMIN)]
        out = subprocess.run(
            kafka_java("kafka.tools.StorageTool")
            + ["format", "--standalone", "-t", cluster_id, "-c", str(conf / "server.properties"), *scram],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise StackError(f"kafka: storage format failed: {out.stderr.strip() or out.stdout.strip()}")
        (conf / "auth_mode").write_text(mode + "\n")


def kafka_java(main: str, heap: str = "-Xmx512m") -> list[str]:
    return ["java", "-Xms128m", heap, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            f"-Dlog4j2.configurationFile={kafka_dir() / 'log4j2.properties'}", "-cp", f"{installed.kafka_jars()}/*", main]


def kafka_healthy() -> bool:
    if not port_in_use(P.kafka):
        return False
    try:
        md = admin_client().list_topics(timeout=2)
        return bool(md.brokers)
    except Exception:  # noqa: BLE001 - any client error means not ready yet
        return False
