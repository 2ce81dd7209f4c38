#!/usr/bin/env bash
# docker-compose.yml `job`: submit the PyFlink job (jobs/content_pipeline.py) unless a job already runs. The job is
# compiled here as the `job` principal (its Kafka DDL: RSCF_KAFKA_PRINCIPAL/RSCF_KAFKA_PASSWORD_FILE) and submitted
# straight to the JobManager's mutual-TLS REST port with its certificate; reads go through the proxy on 8081.
set -euo pipefail
FLINK_HOME=$(python -c 'import os, pyflink; print(os.path.dirname(pyflink.__file__))')
export FLINK_CONF_DIR=/tmp/flink-conf
mkdir -p "$FLINK_CONF_DIR" && cp "$FLINK_HOME"/conf/log4j* "$FLINK_CONF_DIR"/
pw=$(cat /run/secrets/flink-rest-store-password)
store=/run/secrets/flink-rest-keystore
(umask 077 && cat > "$FLINK_CONF_DIR/config.yaml") <<CONF
security.ssl.rest.enabled: true
security.ssl.rest.authentication-enabled: true
security.ssl.rest.keystore: $store
security.ssl.rest.truststore: $store
security.ssl.rest.keystore-password: '$pw'
security.ssl.rest.key-password: '$pw'
security.ssl.rest.truststore-password: '$pw'
security.ssl.algorithms: TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
CONF
until curl -fs http://127.0.0.1:8081/overview | grep -q '"taskmanagers":[1-9]'; do sleep 2; done
if curl -fs http://127.0.0.1:8081/jobs/overview | grep -q '"state":"RUNNING"'; then
  echo "a job is already running; stop it with a savepoint before submitting a new version"
  exit 0
fi
exec "$FLINK_HOME/bin/flink" run -m 127.0.0.1:8082 -d \
  -py jobs/content_pipeline.py -pyexec /opt/venv/bin/python -pyclientexec /opt/venv/bin/python
