"""What SeaweedFS's encryption at rest costs (issue #16 item 5): `rscf bench s3-encryption`.

Two private `weed mini` servers of the same version as the stack's, one plain, one with the stack's
`-filer.encryptVolumeData -s3.encryptVolumeData` (deploy/local/weed.py), each on loopback ports of its own
and a fresh data dir, anonymous S3 (nothing else reaches them). In interleaved rounds (plain, encrypted,
then the other order) one client writes N objects of each size as a worker writes artifacts, then reads
them back: per-operation latency, MB/s, and the server's CPU per MB (psutil, the weed process and its
children). Then the proof: an object holding a random marker is written to each, and every file of each data dir
(volumes, the filer's store) is searched for it: the plain server's volume files hold it, no file of the
encrypted server's may.
Objects are random bytes: what the cipher costs does not depend on content.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection

import psutil

from deploy.local.processes import cpu_seconds, port_bindable
from deploy.local.weed import WeedPorts, weed_mini_argv
from rscf.settings import SETTINGS

BUCKET = "bench"
# gRPC ports are +10000: every base below 22_700 keeps them under Linux's ephemeral range (32768-60999)
PORT_RANGE = range(21_000, 22_700, 10)


@dataclass(frozen=True)
class Plan:
    small_n: int = 300  # objects like an image artifact
    small_kb: int = 64
    large_n: int = 12  # like a speech artifact or a backfill file
    large_kb: int = 4096
    rounds: int = 4


def free_weed_ports(taken: Collection[int] = ()) -> WeedPorts:
    for base in PORT_RANGE:
        ports = WeedPorts(s3=base, master=base + 1, volume=base + 2, filer=base + 3)
        bound = ports.all_bound()
        if not set(bound) & set(taken) and all(port_bindable(p, SETTINGS.host) for p in bound):
            return ports
    raise RuntimeError("no free block of loopback ports for a private weed mini")


@dataclass
class PrivateWeed:
    """`with PrivateWeed(encrypt=True) as w:` a started `weed mini` with one bucket; stopped and removed on exit."""

    encrypt: bool
    taken: set[int] = field(default_factory=set)
    dir: Path = field(init=False)
    ports: WeedPorts = field(init=False)
    proc: subprocess.Popen | None = None

    def __enter__(self) -> "PrivateWeed":
        self.dir = Path(tempfile.mkdtemp(prefix=f"rscf-weed-{'enc' if self.encrypt else 'plain'}-"))
        self.ports = free_weed_ports(self.taken)
        argv = weed_mini_argv(self.dir / "data", self.ports, None, self.encrypt)
        (self.dir / "data").mkdir()
        self.proc = subprocess.Popen(argv, stdout=open(self.dir / "weed.log", "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                if not self.client().bucket_exists(BUCKET):
                    self.client().make_bucket(BUCKET)
                return self
            except Exception as exc:  # noqa: BLE001 - not up yet
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    raise RuntimeError(f"weed mini did not start: {exc}; log: {self.dir / 'weed.log'}") from exc
                time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
                self.proc.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, 9)
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self):
        from minio import Minio

        from rscf.s3 import fail_fast_http_client

        return Minio(f"{SETTINGS.host}:{self.ports.s3}", secure=False, http_client=fail_fast_http_client())

    def cpu_s(self) -> float:
        try:
            return cpu_seconds(psutil.Process(self.proc.pid))
        except psutil.NoSuchProcess:
            return 0.0

    def volume_files(self) -> list[Path]:
        return sorted((self.dir / "data").rglob("*.dat"))

    def files_holding(self, needle: bytes) -> list[str]:
        return [str(f.relative_to(self.dir)) for f in files_holding(self.dir / "data", needle)]


def marker_object(pad: int = 32_768) -> tuple[bytes, bytes]:
    """(a random marker, an object holding it between random bytes): incompressible, so stored as written."""
    marker = secrets.token_hex(32).encode()
    return marker, os.urandom(pad) + marker + os.urandom(pad)


def files_holding(root: Path, needle: bytes) -> list[Path]:
    """Files under `root` (volumes, the filer's store, logs) in which the bytes appear."""
    return sorted(f for f in root.rglob("*") if f.is_file() and needle in f.read_bytes())


def _pcts(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [ms[0]] * 99
    return {"p50_ms": round(q[49], 2), "p99_ms": round(q[98], 2)}


def _round(w: PrivateWeed, tag: str, n: int, size: int) -> dict:
    c = w.client()
    blobs = [os.urandom(size) for _ in range(min(n, 8))]
    put_ms, get_ms = [], []
    cpu0, t0 = w.cpu_s(), time.perf_counter()
    for i in range(n):
        s = time.perf_counter()
        c.put_object(BUCKET, f"{tag}/{i}", io.BytesIO(blobs[i % len(blobs)]), size)
        put_ms.append((time.perf_counter() - s) * 1000)
    put_s, cpu1 = time.perf_counter() - t0, w.cpu_s()
    t1 = time.perf_counter()
    for i in range(n):
        s = time.perf_counter()
        r = c.get_object(BUCKET, f"{tag}/{i}")
        try:
            if len(r.read()) != size:
                raise RuntimeError("short read")
        finally:
            r.close()
            r.release_conn()
        get_ms.append((time.perf_counter() - s) * 1000)
    get_s, cpu2 = time.perf_counter() - t1, w.cpu_s()
    mb = n * size / 1e6
    return {"put": {**_pcts(put_ms), "mb_per_s": mb / put_s, "server_cpu_ms_per_mb": (cpu1 - cpu0) * 1000 / mb},
            "get": {**_pcts(get_ms), "mb_per_s": mb / get_s, "server_cpu_ms_per_mb": (cpu2 - cpu1) * 1000 / mb}}


def _median_of(rounds: list[dict]) -> dict:
    return {op: {k: round(statistics.median(r[op][k] for r in rounds), 2) for k in rounds[0][op]}
            for op in ("put", "get")}


def run(plan: Plan, say=lambda m: None) -> dict:
    out: dict = {"plan": plan.__dict__, "sizes": {}, "at_rest": {}}
    with PrivateWeed(encrypt=False) as plain, PrivateWeed(encrypt=True, taken=set(plain.ports.all_bound())) as enc:
        servers = {"plain": plain, "encrypted": enc}
        for label, n, kb in (("small", plan.small_n, plan.small_kb), ("large", plan.large_n, plan.large_kb)):
            got: dict[str, list[dict]] = {"plain": [], "encrypted": []}
            for r in range(plan.rounds):
                order = ("plain", "encrypted") if r % 2 == 0 else ("encrypted", "plain")
                for mode in order:
                    got[mode].append(_round(servers[mode], f"{label}-{r}", n, kb * 1024))
                say(f"{label} objects ({n} x {kb} KB): round {r + 1}/{plan.rounds}")
            med = {mode: _median_of(v) for mode, v in got.items()}
            out["sizes"][f"{label} ({kb} KB)"] = {
                **med,
                "ratio_encrypted_over_plain": {
                    op: {"p50": round(med["encrypted"][op]["p50_ms"] / med["plain"][op]["p50_ms"], 2),
                         "p99": round(med["encrypted"][op]["p99_ms"] / med["plain"][op]["p99_ms"], 2),
                         "throughput": round(med["encrypted"][op]["mb_per_s"] / med["plain"][op]["mb_per_s"], 2)}
                    for op in ("put", "get")},
            }
        for mode, w in servers.items():
            marker, body = marker_object()
            w.client().put_object(BUCKET, "marker", io.BytesIO(body), len(body))
            read_back = w.client().get_object(BUCKET, "marker")
            try:
                same = read_back.read() == body
            finally:
                read_back.close()
                read_back.release_conn()
            holding = w.files_holding(marker)
            out["at_rest"][mode] = {"read_back_intact": same, "files_holding_plaintext": holding,
                                    "plaintext_in_volume_files": any(f.endswith(".dat") for f in holding),
                                    "volume_files": len(w.volume_files())}
    out["encrypted_at_rest_proven"] = (out["at_rest"]["plain"]["plaintext_in_volume_files"]
                                       and not out["at_rest"]["encrypted"]["files_holding_plaintext"]
                                       and out["at_rest"]["encrypted"]["read_back_intact"])
    return out


def table(out: dict) -> str:
    lines = [f"{'objects':<16} {'op':<4} {'plain p50/p99 ms':>18} {'encrypted p50/p99':>18} "
             f"{'MB/s plain/enc':>16} {'CPU ms/MB plain/enc':>20} {'p50 x':>6} {'MB/s x':>7}"]
    for label, row in out["sizes"].items():
        for op in ("put", "get"):
            p, e, x = row["plain"][op], row["encrypted"][op], row["ratio_encrypted_over_plain"][op]
            lines.append(f"{label:<16} {op:<4} {p['p50_ms']:>8}/{p['p99_ms']:<9} {e['p50_ms']:>8}/{e['p99_ms']:<9} "
                         f"{p['mb_per_s']:>7}/{e['mb_per_s']:<8} {p['server_cpu_ms_per_mb']:>9}/"
                         f"{e['server_cpu_ms_per_mb']:<10} {x['p50']:>6} {x['throughput']:>7}")
    a = out["at_rest"]
    lines.append(f"marker's plaintext found in: plain {a['plain']['files_holding_plaintext']}, "
                 f"encrypted {a['encrypted']['files_holding_plaintext']} (read back intact: "
                 f"{a['encrypted']['read_back_intact']}); encryption at rest proven: {out['encrypted_at_rest_proven']}")
    return "\n".join(lines)
