"""Kubernetes: Flink's REST proxy serves HTTPS only and takes the operator's client certificate (issue #16).

No cluster here: the manifests and the generated Secret are checked as files (with negative controls), the
certificates with real handshakes, and the rendered Caddyfile run by the Caddy binary install.sh builds (loopback,
stopped by its PID) when it is on this machine.
"""

from __future__ import annotations

import contextlib
import copy
import http.server
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy import container_secrets as cs
from deploy import container_tls

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SECRET = "rscf-flink-rest-proxy"


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, Path]:
    data = tmp_path_factory.mktemp("data")
    return cs.write_all(data=data), data


def docs() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(K8S.glob("*.yaml"))}


def one(d: dict[str, list[dict]], kind: str, name: str) -> dict:
    (doc,) = [x for f in d.values() for x in f if x["kind"] == kind and x["metadata"]["name"] == name]
    return doc


# ----------------------------------------------------------------------------- manifests and the Caddyfile


def caddy_problems(text: str) -> list[str]:
    """What is wrong with the Kubernetes proxy's Caddyfile: not HTTPS, a client certificate not required, not
    pinned, or the local rules lost."""
    out = []
    site = [line for line in text.splitlines() if line.endswith("{") and ":" in line and not line.startswith("\t")]
    if site != [f"https://:{cs.PROXY_PORT} {{"]:
        out.append(f"site is not HTTPS on {cs.PROXY_PORT}: {site}")
    t = cs.k8s_proxy_tls()
    for needed in (f"tls {t.cert} {t.key} {{", "mode require_and_verify", f"trust_pool file {t.ca}",
                   "verifier leaf {", f"file {t.client}", "@write not method GET HEAD",
                   "basic_auth @write {", "basic_auth @sensitive {", "@sensitive path /jobmanager/config"):
        if needed not in text:
            out.append(f"missing: {needed}")
    for weak in ("mode request", "mode require\n", "verify_if_given", "http://:"):
        if weak in text:
            out.append(f"weak: {weak.strip()}")
    return out


def manifest_problems(d: dict[str, list[dict]], secret_keys: set[str]) -> list[str]:
    out = []
    dep = one(d, "Deployment", SECRET)["spec"]["template"]["spec"]
    (c,) = dep["containers"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in dep["volumes"]}
    vol = volumes.get(mounts.get(cs.K8S_PROXY_DIR, ""), {})
    if vol.get("secret", {}).get("secretName") != SECRET:
        out.append(f"{cs.K8S_PROXY_DIR} is not Secret {SECRET}")
    if vol.get("secret", {}).get("defaultMode", 0o644) & 0o007:
        out.append("the proxy's key is world-readable in the pod")
    if vol.get("secret", {}).get("defaultMode", 0o644) & 0o040 and dep["securityContext"].get("fsGroup") is None:
        out.append("group-readable files without an fsGroup: root-owned, the proxy's user cannot read them")
    if f"{cs.K8S_PROXY_DIR}/Caddyfile" not in c["command"] or "Caddyfile" not in secret_keys:
        out.append("the command does not run the Secret's Caddyfile")
    for path in (cs.k8s_proxy_tls().cert, cs.k8s_proxy_tls().key, cs.k8s_proxy_tls().ca, cs.k8s_proxy_tls().client):
        if not path.startswith(cs.K8S_PROXY_DIR + "/") or path.rsplit("/", 1)[1] not in secret_keys:
            out.append(f"{path}: not a key of Secret {SECRET}")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    if ports != {"https": cs.PROXY_PORT}:
        out.append(f"container ports {ports}")
    svc = one(d, "Service", SECRET)["spec"]["ports"]
    if [(p["name"], p["port"]) for p in svc] != [("https", cs.PROXY_PORT)]:
        out.append(f"Service ports {svc}")
    for probe in ("readinessProbe", "livenessProbe"):
        if "httpGet" in c.get(probe, {}):
            out.append(f"{probe}: an HTTP probe has no client certificate: it would fail")
    (cm,) = [x for x in d["configmap.yaml"] if x["kind"] == "ConfigMap"]
    if cm["data"]["RSCF_FLINK_URL"] != f"https://{container_tls.PROXY_SERVICE}:{cs.PROXY_PORT}":
        out.append(f"RSCF_FLINK_URL {cm['data']['RSCF_FLINK_URL']}")
    return out


def test_k8s_proxy_takes_https_and_the_operators_certificate(generated):
    out, _ = generated
    keys = set(cs.k8s_secrets()[SECRET])
    assert keys == {"Caddyfile", "tls.crt", "tls.key", "ca.crt", "operator.crt"}
    assert manifest_problems(docs(), keys) == []
    assert caddy_problems((out / cs.CADDYFILE_K8S).read_text()) == []
    assert caddy_problems((out / cs.CADDYFILE_COMPOSE).read_text())  # compose's proxy: loopback, plain HTTP


def test_k8s_proxy_checks_can_fail(generated):
    out, _ = generated
    text = (out / cs.CADDYFILE_K8S).read_text()
    for old, new in (("require_and_verify", "verify_if_given"), ("https://:", "http://:"),
                     ("\t\t\tverifier leaf {\n\t\t\t\tfile /etc/rscf-proxy/operator.crt\n\t\t\t}\n", ""),
                     ("basic_auth @write", "basic_auth @nothing")):
        assert old in text and caddy_problems(text.replace(old, new)), old
    keys = set(cs.k8s_secrets()[SECRET])

    def broken(change) -> list[str]:
        d = copy.deepcopy(docs())
        change(d)
        return manifest_problems(d, keys)

    spec = lambda d: one(d, "Deployment", SECRET)["spec"]["template"]["spec"]  # noqa: E731
    assert broken(lambda d: spec(d)["volumes"][0]["secret"].update(secretName="other"))
    assert broken(lambda d: spec(d)["volumes"][0]["secret"].update(defaultMode=0o644))
    assert broken(lambda d: spec(d)["securityContext"].pop("fsGroup"))
    assert broken(lambda d: spec(d)["containers"][0].update(readinessProbe={"httpGet": {"port": 8081}}))
    assert broken(lambda d: d["configmap.yaml"][0]["data"].update(RSCF_FLINK_URL="http://rscf-flink-rest-proxy:8081"))
    assert manifest_problems(docs(), keys - {"operator.crt"})


def test_kubectl_renders_the_proxys_secret(generated):
    """The generated kubectl line, client side only (no cluster): the Secret holds the files the Caddyfile names."""
    if shutil.which("kubectl") is None:
        pytest.skip("no kubectl")
    out, _ = generated
    (line,) = [c for c in cs.kubectl_commands(out) if f" {SECRET} " in c]
    res = subprocess.run(line.split(" | ")[0], shell=True, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    secret = yaml.safe_load(res.stdout)
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == (SECRET, cs.NAMESPACE)
    assert set(secret["data"]) == {"Caddyfile", "tls.crt", "tls.key", "ca.crt", "operator.crt"}


# ----------------------------------------------------------------------------- certificates


def _names(cert: x509.Certificate) -> list[str]:
    return [str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value]


def _usage(cert: x509.Certificate) -> list:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_certificates_come_from_the_local_ca_and_the_key_stays_here(generated):
    out, data = generated
    ca = x509.load_pem_x509_certificate((data / "secrets" / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((out / cs.PROXY_CERT).read_bytes())
    server.verify_directly_issued_by(ca)
    assert "rscf-flink-rest-proxy.rscf.svc" in _names(server) and "127.0.0.1" in _names(server)
    assert _usage(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    cn = [a.value for a in server.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    assert cn == [container_tls.PROXY_SERVICE]  # its own name, not the gateway's
    files = container_tls.operator_files(data)
    client = x509.load_pem_x509_certificate(files.cert.read_bytes())
    client.verify_directly_issued_by(ca)
    assert _usage(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "rscf-flink-rest-operator"
    assert (out / cs.PROXY_OPERATOR_CERT).read_bytes() == files.cert.read_bytes()
    assert files.key.stat().st_mode & 0o777 == 0o600 and files.key.parent == data / "secrets"
    key = files.key.read_bytes()
    assert all(key not in f.read_bytes() for f in out.iterdir()), "the operator's key is handed to no container"
    assert str(files.key) not in "\n".join(cs.kubectl_commands(out))
    before = (files.cert.read_bytes(), (out / cs.PROXY_CERT).read_bytes())
    cs.write_all(out, data)
    assert (files.cert.read_bytes(), (out / cs.PROXY_CERT).read_bytes()) == before  # kept, not remade each run


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> None:
    """Both ends over a socket pair; raises what the client sees (TLS 1.3: the server's refusal arrives on read)."""
    a, b = socket.socketpair()
    errors: list[Exception] = []

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as s:
                s.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)
            a.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with client.wrap_socket(b, server_hostname="rscf-flink-rest-proxy.rscf.svc") as s:
            if s.recv(2) != b"ok":
                raise ConnectionError("refused after the handshake")
    finally:
        t.join(5)


def test_handshake_needs_a_client_certificate_of_the_ca(generated, tmp_path):
    from deploy.local.monitoring import issue_certificate
    from gateway.tls import ensure_ca
    from rscf.monitoring_security import ClientCert

    out, data = generated
    ca = str(data / "secrets" / "ca.pem")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(out / cs.PROXY_CERT, out / cs.PROXY_KEY)
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(out / cs.GATEWAY_CA)
    files = container_tls.operator_files(data)
    operator = ssl.create_default_context(cafile=ca)
    operator.load_cert_chain(files.cert, files.key)
    _handshake(server, operator)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _handshake(server, ssl.create_default_context(cafile=ca))  # no certificate
    other_ca = ClientCert("x", tmp_path / "x.pem", tmp_path / "x.key")  # a client of another CA
    issue_certificate("x", False, *ensure_ca(tmp_path / "other"), other_ca)
    stranger = ssl.create_default_context(cafile=ca)
    stranger.load_cert_chain(other_ca.cert, other_ca.key)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _handshake(server, stranger)


# ----------------------------------------------------------------------------- the proxy itself (Caddy)


def _caddy() -> str | None:
    from deploy.local import installed

    path = installed.caddy_binary()
    return path if Path(path).exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Upstream(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"flink")

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args) -> None:  # quiet
        pass


def test_generated_caddyfile_adapts(generated):
    caddy = _caddy()
    if caddy is None:
        pytest.skip("no Caddy binary (deploy/local/install.sh builds it)")
    out, _ = generated
    env = {**os.environ, "XDG_DATA_HOME": str(out.parent / "xdg-d"), "XDG_CONFIG_HOME": str(out.parent / "xdg-c")}
    res = subprocess.run([caddy, "adapt", "--config", str(out / cs.CADDYFILE_K8S), "--adapter", "caddyfile"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert '"mode":"require_and_verify"' in res.stdout and '"leaf_certs_loaders"' in res.stdout


@contextlib.contextmanager
def _caddy_run(caddy: str, text: str, port: int, home: Path):
    """Caddy on 127.0.0.1:``port`` with ``text``; stopped by its PID on exit."""
    conf = home / "Caddyfile"
    conf.write_text(text)
    env = {**os.environ, "XDG_DATA_HOME": str(home / "d"), "XDG_CONFIG_HOME": str(home / "c")}
    proc = subprocess.Popen([caddy, "run", "--config", str(conf), "--adapter", "caddyfile"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "Caddy did not listen"
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_caddy_serves_only_the_operators_certificate(generated, tmp_path):
    """The Kubernetes Caddyfile's rules on loopback with the generated files: no certificate or another of the same
    CA is refused at TLS; with the operator's, reads pass and writes and secret reads still ask the password.
    Negative control: without the leaf pin, the CA's other client certificate would pass."""
    caddy = _caddy()
    if caddy is None:
        pytest.skip("no Caddy binary (deploy/local/install.sh builds it)")
    from deploy.local.flink_rest import OPERATOR
    from deploy.local.monitoring import issue_certificate
    from gateway.tls import ensure_ca
    from rscf.monitoring_security import ClientCert

    out, data = generated
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    tls = cs.ServerTls(str(out / cs.PROXY_CERT), str(out / cs.PROXY_KEY), str(out / cs.GATEWAY_CA),
                       str(out / cs.PROXY_OPERATOR_CERT))
    digest = next(line.split()[1] for line in (out / cs.CADDYFILE_K8S).read_text().splitlines()
                  if line.strip().startswith(f"{OPERATOR} $2"))
    ca = str(data / "secrets" / "ca.pem")
    files = container_tls.operator_files(data)
    same_ca = ClientCert("other", tmp_path / "other.pem", tmp_path / "other.key")  # the CA's, not the operator's
    issue_certificate("other", False, *ensure_ca(data / "secrets"), same_ca)
    password = (out / cs.FLINK_REST_OPERATOR).read_text()

    def client(cert: ClientCert | None) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=ca)
        if cert:
            ctx.load_cert_chain(cert.cert, cert.key)
        return httpx.Client(verify=ctx, timeout=5)

    try:
        port = _free_port()
        text = cs.caddyfile(f"http://127.0.0.1:{upstream.server_address[1]}", digest, port=port, server_tls=tls,
                            bind="127.0.0.1")
        url = f"https://localhost:{port}"
        with _caddy_run(caddy, text, port, tmp_path):
            for who in (None, same_ca):
                with client(who) as c, pytest.raises(httpx.HTTPError):
                    c.get(f"{url}/jobs/overview")
            with httpx.Client(timeout=5) as c:  # plain HTTP: Go's 400, nothing from upstream
                r = c.get(f"http://localhost:{port}/jobs/overview")
                assert r.status_code == 400 and r.text != "flink"
            with client(files) as c:
                assert c.get(f"{url}/jobs/overview").text == "flink"
                assert c.post(f"{url}/jobs").status_code == 401
                assert c.get(f"{url}/jobmanager/config").status_code == 401
                assert c.patch(f"{url}/jobs/x?mode=cancel", auth=(OPERATOR, "wrong")).status_code == 401
                assert c.patch(f"{url}/jobs/x?mode=cancel", auth=(OPERATOR, password)).text == "flink"
        port = _free_port()
        unpinned = cs.caddyfile(f"http://127.0.0.1:{upstream.server_address[1]}", digest, port=port,
                                server_tls=tls, bind="127.0.0.1")
        pin = f"\t\t\tverifier leaf {{\n\t\t\t\tfile {tls.client}\n\t\t\t}}\n"
        assert pin in unpinned
        with _caddy_run(caddy, unpinned.replace(pin, ""), port, tmp_path), client(same_ca) as c:
            assert c.get(f"https://localhost:{port}/jobs/overview").text == "flink"
    finally:
        upstream.shutdown()
