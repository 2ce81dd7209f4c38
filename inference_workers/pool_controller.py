"""The pool controller: a stack service that owns every pool's worker replica processes.

Each tick (2 s) it measures every pool's lag and arrival rate over its priority lanes (Kafka admin),
decides with KEDA's semantics (scaling.py, plus a Holt-Winters forecast from forecast.py), fits the
machine's budget, and applies: starts replicas (`rscf worker run`, own session, PID file), drains
surplus ones (SIGTERM: the batch in hand is answered and committed; SIGKILL after the pool's grace)
and restarts crashed ones with back-off. Every decision is a log line and a set of metrics on
/metrics (SETTINGS.ports.pool_controller).

Ownership across restarts: replicas are adopted by PID file (inference_workers/supervisor.py checks
that the PID still runs `worker run` of that pool), so a controller killed and restarted by
supervisord neither orphans nor double-starts replicas. SIGTERM to the controller (`rscf down`)
drains every replica before it exits. Kafka admin unreachable: every pool holds its size and the
log says so; Redis (rate history) unreachable: reactive only, and the log says so.

Every pool also has a backfill-lane target (inference_workers/backfill_lanes.py): 0 replicas when idle,
woken by lag on `genai.inference.requests.<pool>.backfill`, at most 1, niced, from what live pools leave.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from inference_workers import standby, supervisor
from inference_workers.backfill_lanes import lane_grants, lower_priority
from inference_workers.controller_io import ControllerMetrics, LagReader, RateHistory, probe_ready
from inference_workers.controller_targets import Target, parse, targets_from  # noqa: F401 - re-exported
from inference_workers.forecast import peak_ahead, replicas_for_rate, resample
from inference_workers.metrics import HealthServer, register_scrape_target, unregister_scrape_target
from inference_workers.scaling import CrashBackoff, Decision, Policy, cost_of, decide, fit_budget
from rscf import redis_security
from rscf.pools import pool as pool_row
from rscf.settings import SETTINGS

log = logging.getLogger("rscf.pool_controller")


class Controller:
    def __init__(self, targets: list[Target], interval_s: float = 2.0, season_s: float = 3600.0,
                 step_s: float = 10.0, predictive: bool = True, cpu_budget: float | None = None,
                 gpu_budget_gb: float | None = None, bootstrap: str | None = None,
                 redis_url: str | None = None) -> None:
        self.targets = {t.name: t for t in targets}
        self.interval_s = interval_s
        self.season_s, self.step_s, self.predictive = season_s, step_s, predictive
        self.cpu_budget = SETTINGS.limits.pool_cpu_budget if cpu_budget is None else cpu_budget
        self.gpu_budget = SETTINGS.limits.pool_gpu_memory_gb if gpu_budget_gb is None else gpu_budget_gb
        self.lag = LagReader(bootstrap or SETTINGS.kafka_bootstrap)
        # one sample per tick, three seasons of them (the fit resamples them to `step_s`)
        self.history = RateHistory(redis_url or redis_security.url(redis_security.CONTROLLER),
                                   keep=int(3 * season_s / interval_s) + 10)
        self._forecasts: dict[str, tuple[float, float | None]] = {}  # group -> (fitted at, peak): one fit per step
        self.metrics = ControllerMetrics()
        self.backoff = CrashBackoff()
        self.stop_event = threading.Event()
        self.last: dict[str, Decision] = {}

    # ----------------------------------------------------------------- one tick
    def tick(self, now: float | None = None) -> list[Decision]:
        now = time.time() if now is None else now
        self._reap()
        running: dict[str, int] = {}
        decisions: dict[str, Decision] = {}
        for t in self.targets.values():
            self._settle(t, now)
            alive = self._alive(t)
            arrived = t.notice({r.replica for r in alive}, now)
            if arrived:
                log.info("pool=%s replicas %s started outside the controller: kept until ready, then for a "
                         "cooldown (%d s)", t.name, sorted(arrived), t.policy.cooldown_s)
            t.hold_while_loading({r.replica for r in alive}, lambda i, t=t: probe_ready(t.port(i)), now)
            running[t.name] = len(alive)
            decisions[t.name] = self._decide(t, running[t.name], now)
        costs = {n: cost_of(pool_row(t.pool), self.gpu_budget) for n, t in self.targets.items()}
        live = {n: d.target for n, d in decisions.items() if not self.targets[n].lane}
        granted = fit_budget(live, running, costs, self.cpu_budget, self.gpu_budget)
        lanes = {n: d.target for n, d in decisions.items() if self.targets[n].lane}
        if lanes:  # what the live pools leave; a live pool held below its wish takes every lane to 0
            used = [(costs[n].cores * g, costs[n].gpu_memory_gb * g) for n, g in granted.items()]
            granted |= lane_grants(lanes, running, costs, any(granted[n] < w for n, w in live.items()),
                                   self.cpu_budget - sum(c for c, _ in used), self.gpu_budget - sum(g for _, g in used))
        for p, d in decisions.items():
            t = self.targets[p]
            target = min(d.target, granted[p]) if d.target > running[p] or t.lane else d.target
            self._report(d, target)
            self._apply(t, target, now, keeping_up=d.lag is not None and d.lag <= t.policy.lag_threshold)
        self.last = decisions
        return list(decisions.values())

    def _decide(self, t: Target, actual: int, now: float) -> Decision:
        reading = self.lag.read(t.topic, t.group)
        if reading.error is not None:
            self.metrics.hold.labels(t.name).set(1)
            return decide(t.name, t.policy, t.state, None, actual, now, hold_reason=f"kafka admin: {reading.error}")
        self.metrics.hold.labels(t.name).set(0)
        rate = self.lag.rate(t.name, reading, now)
        forecast = predicted = None
        predictive = self.predictive and not t.lane  # a backfill's arrivals follow its budget, not a season
        if rate is not None and predictive:
            self.history.add(t.group, now, rate)  # keyed by group: a test's private pool has its own
        if predictive:
            forecast = self._forecast(t.group, t.pool, now)
            predicted = replicas_for_rate(forecast, t.replica_rps or self._replica_rps(t.pool))
        policy = t.policy
        if 0 < reading.partitions < policy.max_replicas:  # more replicas than partitions would idle
            policy = Policy(**{**policy.__dict__, "max_replicas": max(policy.min_replicas, reading.partitions)})
        return decide(t.name, policy, t.state, reading.lag, actual, now, rate=rate, forecast=forecast,
                      predicted=predicted or 0)

    def _forecast(self, key: str, pool: str, now: float) -> float | None:
        cached = self._forecasts.get(key)
        if cached is not None and now - cached[0] < self.step_s:
            return cached[1]
        peak = self._fit(key, pool, now)
        self._forecasts[key] = (now, peak)
        return peak

    def _fit(self, key: str, pool: str, now: float) -> float | None:
        samples = self.history.load(key)
        if samples is None or not samples:
            return None
        m = max(2, int(self.season_s / self.step_s))
        span = int((now - samples[0][0]) // self.step_s)
        length = min(span, 3 * m)
        if length < 2 * m:
            return None
        series = resample(samples, self.step_s, now, length)
        lead_steps = max(1, int(round(self._lead_s(pool) / self.step_s)))
        return peak_ahead(series, m, lead_steps)

    def _lead_s(self, pool: str) -> float:
        """How far ahead to look: a cold start (the latest measured, else 15 s), two ticks and one step."""
        cold = self.metrics.last_cold_start.get(pool, 15.0)
        return cold + 2 * self.interval_s + self.step_s

    def _replica_rps(self, pool: str) -> float:
        return pool_row(pool).replica_rps or float(pool_row(pool).lag_threshold)

    def _report(self, d: Decision, target: int) -> None:
        m = self.metrics
        m.lag.labels(d.pool).set(d.lag if d.lag is not None else -1)
        m.rate.labels(d.pool).set(d.rate or 0.0)
        m.forecast.labels(d.pool).set(d.forecast if d.forecast is not None else -1)
        m.desired.labels(d.pool).set(d.desired)
        m.wanted.labels(d.pool).set(d.target)
        m.replicas.labels(d.pool).set(d.actual)
        m.target.labels(d.pool).set(target)
        budget = f" budget-capped (wanted {d.target})" if target < d.target else ""
        action = "up" if target > d.actual else "down" if target < d.actual else "hold"
        m.decisions.labels(d.pool, action).inc()
        if target < d.target:
            m.budget_capped.labels(d.pool).inc()
        fc = "-" if d.forecast is None else f"{d.forecast:.1f}/s"
        rate = "-" if d.rate is None else f"{d.rate:.1f}/s"
        line = (f"pool={d.pool} lag={d.lag if d.lag is not None else '?'} rate={rate} forecast={fc} "
                f"reactive={d.reactive} predicted={d.predicted} desired={d.desired} actual={d.actual} "
                f"target={target} reason={d.reason!r}{budget}")
        (log.info if action != "hold" or d.reason.startswith("hold: kafka") else log.debug)(line)

    # ----------------------------------------------------------------- processes
    def _alive(self, t: Target) -> list[supervisor.Replica]:
        """Replicas serving (or starting to): not draining, not parked."""
        parked = self._parked(t)
        return [r for r in supervisor.alive_replicas(t.pool)
                if t.owns(r.replica) and r.replica not in t.draining and r.replica not in parked]

    def _parked(self, t: Target) -> dict[int, supervisor.Replica]:
        return {i: r for i, r in standby.parked(t.pool).items() if t.owns(i) and i not in t.draining}

    def _reap(self) -> None:
        """Collect exited children (replicas started by this controller) so they do not linger as zombies."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def _settle(self, t: Target, now: float) -> None:
        """Finish drains, notice crashes (exits not asked for), measure cold starts."""
        for index, (pid, kill_at) in list(t.draining.items()):
            if not supervisor.is_worker(pid, t.pool):  # the drained process is gone
                r = supervisor.replica(t.pool, index)
                # Its PID file may already name a new replica with the same index (`rscf workers start`
                # right after the drain): that one is not ours to forget, watch or kill.
                if r.pid == pid or not r.alive:
                    r.pid_file.unlink(missing_ok=True)
                    standby.marker(t.pool, index).unlink(missing_ok=True)
                    unregister_scrape_target(f"worker-{t.pool}-{index}")
                del t.draining[index]
                log.info("pool=%s replica=%d drained and stopped", t.name, index)
            elif now >= kill_at:
                log.warning("pool=%s replica=%d still running %.0f s after SIGTERM: SIGKILL", t.name, index,
                            pool_row(t.pool).grace_s)
                _signal(pid, signal.SIGKILL)
        self._notice_exits(t, now)
        for index, spawned_at in list(t.spawned.items()):
            if probe_ready(t.port(index)):
                cold = now - spawned_at
                del t.spawned[index]
                self.metrics.cold_start.labels(t.name).observe(cold)
                self.metrics.last_cold_start[t.name] = cold
                self.metrics.cold_start_last.labels(t.name).set(cold)
                how = "activation of a parked standby" if index in t.activated else "its start (cold start)"
                t.activated.discard(index)
                log.info("pool=%s replica=%d ready (consuming) %.1f s after %s", t.name, index, cold, how)
        alive = self._alive(t)
        if alive and all(now - _started(r) >= self.backoff.stable_s for r in alive):
            self.backoff.healthy(t.name, 0)
            self.metrics.crash_loop.labels(t.name).set(0)

    def _notice_exits(self, t: Target, now: float) -> None:
        """Replicas gone without being asked: forget them and hold the next start back (crash back-off).
        `_apply` asks again right before it starts one: a replica that died since `_settle` looked (CI:
        it died 3 s into its life, in between) was otherwise replaced at once, past its back-off."""
        for r in supervisor.replicas(t.pool):
            if r.alive or r.replica in t.draining or not t.owns(r.replica):
                continue
            try:
                lifetime = now - r.pid_file.stat().st_mtime
            except FileNotFoundError:
                continue
            r.pid_file.unlink(missing_ok=True)
            standby.marker(t.pool, r.replica).unlink(missing_ok=True)  # it may have died parked
            unregister_scrape_target(f"worker-{t.pool}-{r.replica}")
            t.spawned.pop(r.replica, None)
            retry_at = self.backoff.exited(t.name, 0, lifetime, now)
            self.metrics.crashes.labels(t.name).inc()
            loop = self.backoff.crash_loop(t.name)
            self.metrics.crash_loop.labels(t.name).set(1 if loop else 0)
            log.warning("pool=%s replica=%d (pid %s) exited on its own after %.1f s; restart not before %.1f s%s; "
                        "log: %s", t.name, r.replica, r.pid, lifetime, retry_at - now,
                        " CRASH LOOP" if loop else "", r.log_file)

    def _apply(self, t: Target, target: int, now: float, keeping_up: bool = True) -> None:
        alive = self._alive(t)
        if len(alive) < target:
            self._notice_exits(t, now)  # one that just died counts against the back-off before anything starts
            if not self.backoff.may_start(t.name, 0, now):
                return  # crash back-off: the next tick tries again
            need = target - len(alive)
            for r in sorted(self._parked(t).values(), key=lambda r: r.replica)[:need]:
                if standby.activate(r, t.nice):  # warm: a signal and a group join, no cold start
                    if t.nice and r.pid is not None:
                        lower_priority(r.pid, t.nice)
                    t.spawned[r.replica] = now
                    t.activated.add(r.replica)
                    need -= 1
                    log.info("pool=%s replica=%d activated from standby (pid %s)", t.name, r.replica, r.pid)
            for _ in range(need):
                index = self._free_index(t)
                r = supervisor.start_replica(t.pool, index, t.args(index))
                if t.nice and r.pid is not None:
                    lower_priority(r.pid, t.nice)
                t.spawned[index] = now
                log.info("pool=%s replica=%d started (pid %s)", t.name, index, r.pid)
        elif len(alive) > target:
            for r in sorted(alive, key=lambda r: r.replica, reverse=True)[: len(alive) - target]:
                self._drain(t, r, now)
        self._keep_standby(t, now, keeping_up)

    def _free_index(self, t: Target) -> int:
        taken = {r.replica for r in supervisor.alive_replicas(t.pool)} | set(t.draining) | set(t.spawned)
        index = t.first_index
        while index in taken:
            index += 1
        return index

    def _keep_standby(self, t: Target, now: float, keeping_up: bool = True) -> None:
        """Keep `t.standby` replicas parked: park one more per tick when short, drain the surplus. A
        replacement is parked only while the pool keeps up (lag within its threshold): one loading its
        model during a burst takes the cores the burst needs (image pool, 2 cores: the serving replicas
        ran ~3x slower while one loaded), and it is for the next burst anyway."""
        parked = self._parked(t)
        if len(parked) < t.standby and keeping_up and self.backoff.may_start(t.name, 0, now):
            index = self._free_index(t)
            r = standby.park(t.pool, index, t.args(index))
            log.info("pool=%s replica=%d parked as a warm standby (pid %s, nice %d)", t.name, index, r.pid,
                     standby.STANDBY_NICE)
        for r in sorted(parked.values(), key=lambda r: r.replica, reverse=True)[: max(0, len(parked) - t.standby)]:
            self._drain(t, r, now)

    def _drain(self, t: Target, r: supervisor.Replica, now: float) -> None:
        if r.pid is None:
            return
        _signal(r.pid, signal.SIGTERM)
        t.draining[r.replica] = (r.pid, now + pool_row(t.pool).grace_s)
        t.spawned.pop(r.replica, None)
        log.info("pool=%s replica=%d draining (SIGTERM: answer the batch in hand, commit, leave)", t.name, r.replica)

    # ----------------------------------------------------------------- lifecycle
    def adopt(self) -> None:
        for t in self.targets.values():
            for r in supervisor.replicas(t.pool):
                if r.alive and t.owns(r.replica):
                    parked = " as a parked standby" if standby.marker(t.pool, r.replica).exists() else ""
                    log.info("pool=%s replica=%d adopted%s (pid %s, from its PID file)", t.name, r.replica, parked, r.pid)

    def run(self) -> None:
        self.adopt()
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - one bad tick must not stop the pools' supervision
                log.exception("tick failed; holding every pool until the next one")
            self.stop_event.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
        self.drain_all()

    def drain_all(self) -> None:
        """SIGTERM every replica, wait (the longest grace of a pool), SIGKILL what is left."""
        now = time.time()
        for t in self.targets.values():
            for r in [*self._alive(t), *self._parked(t).values()]:
                self._drain(t, r, now)
        deadline = time.monotonic() + max((pool_row(t.pool).grace_s for t in self.targets.values()), default=0)
        while time.monotonic() < deadline and any(t.draining for t in self.targets.values()):
            self._reap()
            for t in self.targets.values():
                self._settle(t, time.time())
            time.sleep(0.2)
        for t in self.targets.values():
            for index, (pid, _) in t.draining.items():
                _signal(pid, signal.SIGKILL)
                if supervisor.replica(t.pool, index).pid == pid:  # not a newer replica's PID file
                    supervisor.pid_file(t.pool, index).unlink(missing_ok=True)
        log.info("controller stopped; every replica drained")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _started(r: supervisor.Replica) -> float:
    try:
        return r.pid_file.stat().st_mtime
    except FileNotFoundError:
        return time.time()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ns = parse(argv)
    ctl = Controller(targets_from(ns), ns.interval, ns.season, ns.step, not ns.no_predictive, ns.cpu_budget)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: ctl.stop_event.set())
    server = None
    if ns.port >= 0:
        server = HealthServer(ctl.metrics, lambda: True, ns.port, SETTINGS.host).start()
        register_scrape_target("pool-controller", server.port, {"component": "pool-controller"})
    log.info("pool controller: pools %s, tick %.1f s, budget %.2f cores / %.1f GB GPU, predictive %s",
             ",".join(ctl.targets), ns.interval, ctl.cpu_budget, ctl.gpu_budget, not ns.no_predictive)
    try:
        ctl.run()
    finally:
        if server is not None:
            unregister_scrape_target("pool-controller")
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
