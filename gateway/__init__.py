"""The HTTP gateway: authenticated tenants in, Avro prompts to Kafka keyed by tenant, each tenant's finals
and artifacts out (issue #16). A runtime peer of `jobs/` and `inference_workers/`."""
