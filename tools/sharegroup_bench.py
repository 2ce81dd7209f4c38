"""`rscf bench sharegroups`: Kafka share groups (KIP-932) against partition-bound classic consumer
groups for the worker pools (issue #15, "beyond the partition cap"), on the same load, measured.

A PRIVATE Kafka 4.4.0 broker (tools/private_kafka.py: the stack's 4.1.1 has no share groups) and N
replica processes (tools/sharegroup_replica.py: the same echo-cost loop, `--item-ms` of simulated model
time per request) per arm; arms differ in the group kind and the partitions (N > P included). Per arm:
records answered per replica (spread), throughput, latency p50/p99 (send time to the result's
CreateTime), lost and duplicated; kill arms SIGKILL the busiest replica mid-load and measure how long
its in-flight records (handed to its loop, not answered by it) take to be answered by another replica,
and the worst latency of requests sent in the 2 s after the kill; linger arms show how producer
batching decides a share group's spread (the broker hands out whole batches).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rscf.settings import SETTINGS


@dataclass(frozen=True)
class Arm:
    name: str
    mode: str  # "classic" | "share"
    partitions: int
    linger_ms: float = 5.0
    rate: float | None = None  # None: the plan's
    kill: bool = False


@dataclass
class Plan:
    replicas: int = 4
    rate: float = 150.0  # requests/s offered: more than 1 or 2 replicas serve, less than 4
    duration_s: float = 10.0
    item_ms: float = 20.0  # 50 requests/s per replica
    batch: int = 1  # records per poll (share: max.poll.records); burst_bench's echo pool runs batches of 1
    kill_rate: float = 60.0  # the kill arms: a rate 2 classic replicas keep up with, so the kill is what shows
    kill_at_s: float = 4.0
    lingers: tuple[float, ...] = (100.0, 1000.0)  # extra share arms on 1 partition (5 ms is the stack's)
    drain_timeout_s: float = 45.0
    session_timeout_ms: int = SETTINGS.limits.worker_session_timeout_ms

    def arms(self, only: str | None = None) -> list[Arm]:
        out = [Arm(f"{m}-p{p}", m, p) for p in (1, 2) for m in ("classic", "share")]
        out.append(Arm(f"classic-p{self.replicas}", "classic", self.replicas))  # N = P: the classic group's best
        out += [Arm(f"share-p1-linger{int(l)}", "share", 1, linger_ms=l) for l in self.lingers]
        out += [Arm(f"{m}-p2-kill", m, 2, rate=self.kill_rate, kill=True) for m in ("classic", "share")]
        return [a for a in out if only is None or only in a.name]


def _pcts(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    v = sorted(values)
    q = statistics.quantiles(v, n=100, method="inclusive") if len(v) > 1 else [v[0]] * 99
    return {"n": len(v), "p50_ms": round(q[49], 1), "p99_ms": round(q[98], 1), "max_ms": round(v[-1], 1)}


class Results(threading.Thread):
    """Reads the arm's results topic from the beginning: id -> [(replica, t answered, delivery count)]."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{topic}", "enable.auto.commit": False})
        self.c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self.got: dict[str, list[tuple[str, float, int | None]]] = {}
        self.lock, self.stop = threading.Lock(), threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for m in self.c.consume(500, 0.2):
                if m.error() is None:
                    r = json.loads(m.value())
                    with self.lock:
                        self.got.setdefault(r["id"], []).append((r["replica"], m.timestamp()[1] / 1000.0, r["dc"]))
        self.c.close()

    def answered(self, ids) -> int:
        with self.lock:
            return sum(1 for i in ids if i in self.got)


class ArmRun:
    def __init__(self, bootstrap: str, plan: Plan, arm: Arm, workdir: Path, say) -> None:
        self.b, self.plan, self.arm, self.say = bootstrap, plan, arm, say
        self.dir = workdir / arm.name
        self.dir.mkdir(parents=True)
        tag = f"{arm.name}-{os.getpid()}-{int(time.time())}"
        self.topic, self.results, self.group = f"sg.requests.{tag}", f"sg.results.{tag}", f"sg-{tag}"
        self.procs: dict[str, subprocess.Popen] = {}

    def _topics(self) -> None:
        from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic,
                                           ResourceType)

        admin = AdminClient({"bootstrap.servers": self.b})
        for f in admin.create_topics([NewTopic(self.topic, self.arm.partitions, 1), NewTopic(self.results, 1, 1)],
                                     operation_timeout=15).values():
            f.result(30)
        if self.arm.mode == "share":  # a new share group starts at `latest` (FACTS.md): read from the start
            res = ConfigResource(ResourceType.GROUP, self.group, incremental_configs=[
                ConfigEntry("share.auto.offset.reset", "earliest", incremental_operation=AlterConfigOpType.SET)])
            for f in admin.incremental_alter_configs([res]).values():
                f.result(30)

    def _start(self, name: str) -> None:
        cmd = [sys.executable, "-m", "tools.sharegroup_replica", self.arm.mode, self.b, self.topic, self.group,
               self.results, name, str(self.dir / f"{name}.recv"), "--item-ms", str(self.plan.item_ms),
               "--batch", str(self.plan.batch), "--session-timeout-ms", str(self.plan.session_timeout_ms)]
        out = open(self.dir / f"{name}.log", "ab")
        env = {**os.environ, "PYTHONPATH": str(SETTINGS.paths.repo)}
        self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=SETTINGS.paths.repo)

    def _received(self, name: str) -> list[tuple[str, float]]:
        try:
            lines = (self.dir / f"{name}.recv").read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and not parts[0].startswith(("subscribed", "commit-failed")):
                out.append((parts[0], float(parts[1])))
        return out

    def _produce(self, ids: list[str], rate: float, kill_at: float | None) -> tuple[dict[str, float], dict | None]:
        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": self.b, "enable.idempotence": True, "acks": "all",
                      "linger.ms": self.arm.linger_ms, "batch.num.messages": 100000, "batch.size": 4_000_000})
        sent: dict[str, float] = {}
        killed = None
        t0 = time.time()
        for i, rid in enumerate(ids):
            due = t0 + i / rate
            while (now := time.time()) < due:
                time.sleep(min(0.005, due - now))
                p.poll(0)
            if kill_at is not None and killed is None and now - t0 >= kill_at:
                killed = self._kill_busiest(now - t0)
            sent[rid] = time.time()
            p.produce(self.topic, key=rid.encode(), value=json.dumps({"t": sent[rid]}).encode())
            p.poll(0)
        p.flush(30)
        return sent, killed

    def _kill_busiest(self, at_s: float) -> dict:
        """SIGKILL the replica that took a record most recently (one that holds work, not an idle one)."""
        last = {n: (self._received(n)[-1][1] if self._received(n) else 0.0) for n in self.procs}
        victim = max(last, key=last.get)
        self.procs[victim].send_signal(signal.SIGKILL)
        self.say(f"{self.arm.name}: SIGKILL {victim} (pid {self.procs[victim].pid}) at {at_s:.1f} s")
        return {"replica": victim, "at": time.time(), "at_s": round(at_s, 2)}

    def run(self) -> dict:
        a, plan = self.arm, self.plan
        self._topics()
        reader = Results(self.b, self.results)
        reader.start()
        try:
            for i in range(plan.replicas):
                self._start(f"r{i}")
            deadline = time.monotonic() + 60
            while not all((self.dir / f"r{i}.recv").exists() for i in range(plan.replicas)):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{a.name}: replicas did not subscribe within 60 s (logs in {self.dir})")
                time.sleep(0.2)
            warm = [f"w-{i}" for i in range(4 * plan.replicas)]  # the group settles (classic: rebalances)
            self._produce(warm, 50.0, None)
            self._wait(reader, warm, 60)
            time.sleep(2.0)
            rate = a.rate or plan.rate
            ids = [f"m-{i}" for i in range(int(rate * plan.duration_s))]
            self.say(f"{a.name}: {len(ids)} requests at {rate:.0f}/s, {a.partitions} partition(s), "
                     f"{plan.replicas} {a.mode} replicas, linger {a.linger_ms:g} ms")
            sent, killed = self._produce(ids, rate, plan.kill_at_s if a.kill else None)
            end = time.time()
            self._wait(reader, ids, plan.drain_timeout_s)
        finally:
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in self.procs.values():
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            time.sleep(0.5)
            reader.stop.set()
            reader.join(5)
        return self._summary(sent, end, reader.got, killed)

    def _wait(self, reader: Results, ids: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while reader.answered(ids) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.2)

    def _summary(self, sent: dict[str, float], end: float, got: dict, killed: dict | None) -> dict:
        first = {rid: min(got[rid], key=lambda x: x[1]) for rid in sent if rid in got}
        per_replica = {f"r{i}": 0 for i in range(self.plan.replicas)}
        for replica, _, _ in first.values():
            per_replica[replica] = per_replica.get(replica, 0) + 1
        lat = [(first[r][1] - t) * 1000 for r, t in sent.items() if r in first]
        t_first = min(sent.values())
        t_last = max((x[1] for x in first.values()), default=t_first)
        n = len(first)
        out = {
            "arm": self.arm.name, "mode": self.arm.mode, "partitions": self.arm.partitions,
            "replicas": self.plan.replicas, "linger_ms": self.arm.linger_ms, "rate_offered": self.arm.rate or self.plan.rate,
            "sent": len(sent), "answered": n, "lost": len(sent) - n,
            "duplicated": sum(len(got[r]) - 1 for r in sent if r in got),
            "per_replica": per_replica, "replicas_used": sum(1 for v in per_replica.values() if v > 0),
            "spread_max_share": round(max(per_replica.values()) / n, 3) if n else None,
            "throughput_per_s": round(n / max(t_last - t_first, 1e-6), 1),
            "drain_s": round(t_last - end, 2), "latency": _pcts(lat),
            "max_delivery_count": max((dc or 0 for v in got.values() for _, _, dc in v), default=0) or None,
        }
        if killed:
            victim, at = killed["replica"], killed["at"]
            orphans = {rid for rid, _ in self._received(victim) if rid in sent} - {
                rid for rid, v in got.items() if any(rep == victim for rep, _, _ in v)}
            by_others = [min(t for rep, t, _ in got[r] if rep != victim) for r in orphans
                         if r in got and any(rep != victim for rep, _, _ in got[r])]
            after = [(first[r][1] - t) for r, t in sent.items() if at <= t < at + 2 and r in first]
            out["kill"] = {
                "replica": victim, "at_s": killed["at_s"], "in_flight": len(orphans),
                "in_flight_answered_by_others": len(by_others),
                "in_flight_answered_after_s": round(max(by_others) - at, 2) if by_others else None,
                "worst_latency_sent_2s_after_kill_s": round(max(after), 2) if after else None,
            }
        return out


def run(plan: Plan, only: str | None = None, say=lambda m: None, keep: bool = False) -> dict:
    """Every arm on one private Kafka 4.4.0 broker (stopped at the end); the figures and ratios."""
    from tools.private_kafka import SHARE_KAFKA_VERSION, PrivateBroker

    arms = plan.arms(only)
    if not arms:
        raise ValueError(f"no arm matches {only!r}")
    work = Path(tempfile.mkdtemp(prefix="rscf-sharegroups-", dir=SETTINGS.paths.data if SETTINGS.paths.data.exists() else None))
    rows = []
    with PrivateBroker(work / "kafka", say=say) as broker:
        for i, arm in enumerate(arms, 1):
            say(f"[{i}/{len(arms)}] {arm.name}")
            rows.append(ArmRun(broker.bootstrap, plan, arm, work, say).run())
    if not keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return {"kafka": SHARE_KAFKA_VERSION, "plan": {k: v for k, v in asdict(plan).items()}, "arms": rows,
            "ratios": ratios(rows), "workdir": str(work) if keep else None}


def ratios(rows: list[dict]) -> dict:
    """share / classic on the same topic shape: throughput, p99; the kill arms' recovery."""
    by = {r["arm"]: r for r in rows}
    out = {}
    for p in (1, 2):
        c, s = by.get(f"classic-p{p}"), by.get(f"share-p{p}")
        if c and s:
            out[f"p{p}_throughput_share_over_classic"] = round(s["throughput_per_s"] / max(c["throughput_per_s"], 1e-9), 2)
            if c["latency"].get("p99_ms") and s["latency"].get("p99_ms"):
                out[f"p{p}_p99_share_over_classic"] = round(s["latency"]["p99_ms"] / c["latency"]["p99_ms"], 3)
    full = [r for r in rows if r["mode"] == "classic" and r["arm"] == f"classic-p{r['replicas']}"]
    if full and by.get("share-p1"):  # one partition shared vs as many partitions as replicas (classic's best)
        s, c = by["share-p1"], full[0]
        out["share_p1_over_classic_p_eq_n_throughput"] = round(s["throughput_per_s"] / max(c["throughput_per_s"], 1e-9), 2)
        if c["latency"].get("p99_ms") and s["latency"].get("p99_ms"):
            out["share_p1_over_classic_p_eq_n_p99"] = round(s["latency"]["p99_ms"] / c["latency"]["p99_ms"], 2)
    ck, sk = (by.get(f"{m}-p2-kill", {}).get("kill") or {} for m in ("classic", "share"))
    if ck.get("worst_latency_sent_2s_after_kill_s") and sk.get("worst_latency_sent_2s_after_kill_s"):
        out["kill_worst_latency_share_over_classic"] = round(
            sk["worst_latency_sent_2s_after_kill_s"] / ck["worst_latency_sent_2s_after_kill_s"], 2)
    return out


def table(result: dict) -> str:
    head = (f"{'arm':<22} {'P':>2} {'linger':>6} {'sent':>5} {'lost':>4} {'dup':>4} {'per replica':<22} "
            f"{'rec/s':>6} {'p50 ms':>8} {'p99 ms':>8} {'drain s':>7}  kill")
    lines = [head]
    for r in result["arms"]:
        k = r.get("kill")
        ks = (f"{k['replica']} at {k['at_s']} s: {k['in_flight']} in flight, answered by others after "
              f"{k['in_flight_answered_after_s']} s; worst sent after {k['worst_latency_sent_2s_after_kill_s']} s") if k else ""
        lat = r["latency"]
        lines.append(f"{r['arm']:<22} {r['partitions']:>2} {r['linger_ms']:>6g} {r['sent']:>5} {r['lost']:>4} "
                     f"{r['duplicated']:>4} {'/'.join(str(v) for v in r['per_replica'].values()):<22} "
                     f"{r['throughput_per_s']:>6} {lat.get('p50_ms', '-'):>8} {lat.get('p99_ms', '-'):>8} "
                     f"{r['drain_s']:>7}  {ks}")
    lines.append("ratios: " + ", ".join(f"{k} {v}" for k, v in result["ratios"].items()))
    return "\n".join(lines)
