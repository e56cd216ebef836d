"""What the driver decides before any worker starts: which output, what it
holds, which shards to embed; and that the output can be written at all."""

from __future__ import annotations

import contextlib
import errno
import logging
from dataclasses import dataclass

from apache_beam.options.pipeline_options import PipelineOptions

from beamvec.contract import OutputState, read_state
from beamvec.contract.layout import PROBE
from beamvec.driver.resolve import (
    JobInputs,
    Work,
    conflict,
    resolve_inputs,
    retry_reasons,
    split_work,
    uncovered_by_force,
)
from beamvec.errors import SystemicError, UsageError, reason_of
from beamvec.route.lookup import check_reuse_source
from beamvec.write.sink import Output

LOG = logging.getLogger("beamvec")


@dataclass
class JobPlan:
    """Everything decided on the driver before the pipeline is built."""

    inputs: JobInputs
    output: Output
    state: OutputState
    work: Work


def plan_job(options: PipelineOptions) -> JobPlan:
    inputs = resolve_inputs(options)
    output = Output(inputs.bv.output, inputs.storage_options)
    state = read_state(output)
    why = conflict(state, inputs.description)
    if why and not inputs.bv.force:
        raise UsageError(
            f"{output.url} {why}; write to a new --output, or pass --force to replace them"
        )
    uncovered = uncovered_by_force(state, inputs.shards) if why else None
    if uncovered:
        raise UsageError(f"{output.url}: {uncovered}")
    for url in inputs.bv.reuse_from or ():
        check_reuse_source(inputs.description, Output(url, inputs.storage_options))
    for path, why in state.damaged.items():  # those shards are redone (contract.check_part)
        LOG.warning("%s is damaged (%s): its shard is embedded again", path, why)
    work = split_work(inputs.shards, state, inputs.description.config_fingerprint, inputs.bv.force,
                      retry_reasons(inputs.bv.retry_dead_letters))
    return JobPlan(inputs, output, state, work)


def check_output_writable(output: Output) -> None:
    """Write and delete a small object under the output before any text is sent:
    a missing bucket, wrong credentials, a read-only grant or a full disk stop
    the run here, in one line, not when the first shard commits after its
    quota is spent."""
    probe = output.path(PROBE)
    existed = output.fs.exists(output.root)
    try:
        output.makedirs(output.root)
        with output.fs.open(probe, "wb") as fh:
            fh.write(b"beamvec checks that it may write here\n")
    except OSError as exc:
        output.remove(probe)
        reason = reason_of(exc)
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            raise SystemicError(f"cannot write to the output {output.url}: {reason}; free some space") from None
        raise SystemicError(
            f"cannot write to the output {output.url}: {reason}; check that the bucket exists "
            "and that the credentials in the environment may create and delete objects in it"
        ) from None
    output.remove(probe)
    if not existed and output.renames:  # leave no empty directory behind a run that stops here
        with contextlib.suppress(OSError):
            output.fs.rmdir(output.root)
