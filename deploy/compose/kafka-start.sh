#!/usr/bin/env bash
# The compose broker's start (docker-compose.yml `kafka`): SASL/SCRAM-SHA-512 on the client listener, PLAIN with one
# static user on the controller listener (KRaft controllers cannot check SCRAM), the StandardAuthorizer, as the local
# broker (deploy/local/kafka_broker.py). The passwords come from the compose secrets and reach only files of this
# container (0600): server.properties, and the admin's client properties for the health check. The admin's SCRAM
# credential is written when the volume is formatted; `init` (deploy/container_init.py) adds every other principal.
set -euo pipefail
umask 077
conf=/opt/kafka/config/rscf-server.properties
data=/var/lib/kafka/data
if [ -e "$data/meta.properties" ] && [ ! -e "$data/rscf-sasl-scram" ]; then
  echo "kafka: this volume was formatted without SASL/SCRAM; start afresh: docker compose down -v" >&2
  exit 1
fi
admin=$(cat /run/secrets/kafka-admin)
internal=$(cat /run/secrets/kafka-controller-listener)
scram=org.apache.kafka.common.security.scram.ScramLoginModule
plain=org.apache.kafka.common.security.plain.PlainLoginModule
{
  cat /etc/rscf/kafka.properties
  echo "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=$scram required username=\"admin\" password=\"$admin\";"
  echo "listener.name.controller.plain.sasl.jaas.config=$plain required username=\"admin\" password=\"$internal\" user_admin=\"$internal\";"
} > "$conf"
printf 'security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config=%s required username="admin" password="%s";\n' \
  "$scram" "$admin" > /opt/kafka/config/rscf-admin.properties
if [ ! -e "$data/meta.properties" ]; then
  touch "$data/rscf-sasl-scram"  # first: a start cut short after the format must not look like an old volume
  /opt/kafka/bin/kafka-storage.sh format -t "$CLUSTER_ID" -c "$conf" \
    --add-scram "SCRAM-SHA-512=[name=admin,password=$admin]"
fi
exec /opt/kafka/bin/kafka-server-start.sh "$conf"
