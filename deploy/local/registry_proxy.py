"""The schema registry's front door: Caddy on the registry's port, Apicurio behind it on 127.0.0.1.

With write authentication on (rscf/registry_security.py) Apicurio refuses every anonymous write, and
that includes what a default Confluent serializer does before its first record: `auto.register.schemas`
is on by default, so `AvroSerializer` POSTs the schema to ``/subjects/{subject}/versions`` even when the
registry already holds it. Confluent's own registry answers such a repeat with the existing id; under
Apicurio's authorisation it is a write, 401. So that every existing client keeps working, the proxy sends
an anonymous registration to the look-up endpoint of the same subject (``POST /subjects/{subject}``,
a read), which answers the existing schema's id, or 404 when that schema is not registered: an anonymous
client can use the contracts, never add or change one. A request with a credential goes through as it
is, and Apicurio checks it. Apicurio's own port refuses anonymous writes too, so going around the proxy
gains nothing. (A proven server, Caddy, already built for the Flink REST proxy; no code of ours on the
request path.)
"""

from __future__ import annotations

from pathlib import Path

from rscf.settings import SETTINGS

H, P = SETTINGS.host, SETTINGS.ports


def caddyfile(listen: int, upstream: int) -> str:
    """Anonymous POST .../subjects/{s}/versions -> POST .../subjects/{s} (look-up); everything else as is."""
    return f"""{{
	admin off
	persist_config off
	auto_https off
	grace_period 5s
}}

http://:{listen} {{
	bind {H}
	@anonymous_register {{
		method POST
		path_regexp register ^/apis/ccompat/(v[0-9]+)/subjects/([^/]+)/versions/?$
		not header Authorization *
	}}
	rewrite @anonymous_register /apis/ccompat/{{re.register.1}}/subjects/{{re.register.2}}
	reverse_proxy http://{H}:{upstream}
}}
"""


def config_file() -> Path:
    return SETTINGS.paths.data / "registry" / "Caddyfile"


def prepare() -> None:
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(caddyfile(P.registry, P.registry_internal))


def argv() -> list[str]:
    from deploy.local import installed

    return [installed.caddy_binary(), "run", "--config", str(config_file()), "--adapter", "caddyfile"]


def env() -> dict[str, str]:
    """Caddy keeps nothing outside the data dir."""
    home = SETTINGS.paths.data / "caddy-registry"
    return {"XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config")}
