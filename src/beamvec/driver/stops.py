"""How a run stops: a stall, a lost lease, Ctrl-C or SIGTERM, a worker's
fault, each said in one line; and a remote job cancelled before the lease goes."""

from __future__ import annotations

import signal
import sys
from typing import Any

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from beamvec.contract import complete_shards, read_state
from beamvec.contract.fence import LOST, lost_error
from beamvec.driver.job_plan import JobPlan
from beamvec.driver.lease import STALL_S
from beamvec.errors import Interrupted, SystemicError, reason_of
from beamvec.interrupt import STOP, Terminated
from beamvec.progress import PROGRESS

#: How long a stopped launcher waits for its remote job to be cancelled.
CANCEL_WAIT_S = 300


class Liveness:
    """What the lease's renewer asks: has the run moved since it last asked?
    Only while the pipeline runs in this process, where its workers count
    into ``PROGRESS``; before (planning, batch jobs) it always has."""

    def __init__(self, in_process: bool) -> None:
        self.in_process = in_process
        self.watching = False

    def __call__(self) -> object:
        return PROGRESS.read() if self.watching and self.in_process else object()


def stalled() -> None:
    """The run made no progress for ``STALL_S``: stop it (the lease stops being renewed)."""
    import _thread

    STOP.request("stalled")
    _thread.interrupt_main()  # the driver ends the run in one line (``stopped``)


def lost() -> None:
    """Another run took the output over: this one stops sending at once, and
    its commits are refused from now on (contract.fence)."""
    import _thread

    STOP.request(LOST)
    _thread.interrupt_main()


def stopped(plan: JobPlan, cause: BaseException) -> BaseException:
    """After the pipeline failed or was stopped: let the workers settle, then
    say why in one line (what stays committed, when it was a signal)."""
    if not STOP.requested:
        STOP.request("a worker failed")
    STOP.settle()  # no shard commits after this: the count below is the truth
    if STOP.reason == LOST:
        return lost_error(plan.output)
    if STOP.reason == "stalled":
        return SystemicError(
            f"the run made no progress for {STALL_S:.0f} s and was stopped; committed shards "
            "stay committed: rerun the same command (with --debug to see where it stalled)"
        )
    if STOP.signum is not None or isinstance(cause, KeyboardInterrupt) or interrupted(cause):
        return interruption(plan)
    return cause


def cancel_remote(result: Any) -> None:
    """Ctrl-C, SIGTERM or a lost lease on a launcher whose job runs remotely
    (Dataflow, Flink, Spark): cancel the job and wait until it ends, so that
    the lease is released only once no worker of it can write. Where that
    fails, say in one line that the job goes on (its commits stay fenced)."""
    try:
        result.cancel()
        result.wait_until_finish(duration=CANCEL_WAIT_S * 1000)
        state = str(getattr(result, "state", ""))
    except Exception as exc:  # noqa: BLE001 - a runner without cancel, an API error
        state = f"not cancelled ({reason_of(exc)})"
    if "CANCELLED" not in state and "DONE" not in state and "FAILED" not in state:
        print(f"beamvec run: the remote job is {state or 'still running'}; it goes on and its "
              "commits are refused once another run holds the output: cancel it on its runner",
              file=sys.stderr)


def interrupted(exc: BaseException) -> bool:
    """Whether a runner's error is a Ctrl-C it caught in a bundle (Beam
    re-raises it as RuntimeError("KeyboardInterrupt [while running ...]"))."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt) or str(current).startswith("KeyboardInterrupt"):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def interruption(plan: JobPlan) -> Interrupted:
    """Ctrl-C: one line saying how many shards stand committed."""
    try:
        done = complete_shards(read_state(plan.output).committed.values())
        names = {s.name: s.fingerprint for s in plan.inputs.shards}
        count = sum(1 for name, fp in done.items() if names.get(name) == fp)
        what = f"{count} of {len(names)} shards are committed in {plan.output.url}"
    except Exception:  # noqa: BLE001 - the line must come out whatever the output's state
        what = f"the shards committed in {plan.output.url} stay committed"
    kind = Terminated if STOP.signum == signal.SIGTERM else Interrupted
    return kind(f"{STOP.reason or 'interrupted'}; {what}; rerun the same command to embed the rest")


def in_process(options: PipelineOptions) -> bool:
    """Whether workers run in this process, so that live progress can be read."""
    runner = options.view_as(StandardOptions).runner
    mode = options.view_as(DirectOptions).direct_running_mode
    return runner in (None, "DirectRunner", "BundleBasedDirectRunner") and mode in (None, "in_memory")
