"""PyFlink functions of the content pipeline: state, timers and metrics around the job's steps
(`jobs.intake`, `jobs.gate`, `jobs.orchestrate`).

Kept in an importable module (not the job script, run as __main__) so cloudpickle ships these classes
by reference: a class pickled by value drags in module globals, and any that hold py4j objects fail
with "cannot pickle '_thread.RLock'" (measured). Keyed state holds pickled Python values; their
classes (`jobs.envelopes`, `operators.*`) must be importable where the job restores.

No record can stop the job: every function runs its step for one input inside a guard,
and a record a step crashes on (decode, a step, serialisation) becomes a dead letter with
reason `internal_error` (and, for a prompt, a FAILED final), instead of failing the task
and putting the job in a restart loop (`jobs.failures`). Output size limits: `jobs.encoder`.

The functions: `jobs.flink_wire` (wire rows, control intake), `jobs.flink_gate` (TenantGate),
`jobs.flink_orchestrator` (RequestOrchestrator). This module gathers them for the job wiring.
"""

from jobs.flink_gate import TenantGate
from jobs.flink_orchestrator import RequestOrchestrator
from jobs.flink_wire import NEXT, SINK, ControlIntake, is_next, is_sink, payload, wire, wired_dead_letter
from jobs.state import control_descriptor

__all__ = ["NEXT", "SINK", "ControlIntake", "RequestOrchestrator", "TenantGate", "control_descriptor", "is_next",
           "is_sink", "payload", "wire", "wired_dead_letter"]
