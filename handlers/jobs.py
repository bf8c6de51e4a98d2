"""Analysis job endpoints: lists, detail, status, progress, cancel, active jobs, metrics and failures."""

from __future__ import annotations

import re

from handlers.base import DETAIL, LIST, UUID, APIHandler, authenticated
from models.errors import ValidationFailed
from models.jobs import MAX_FAILURE_DAYS, JobCancelIn, Jobs, JobType, render_job, render_progress, render_status


class JobsBase(APIHandler):
    """The jobs repository."""

    @property
    def jobs(self) -> Jobs:
        return self.services.jobs


class JobListHandler(JobsBase):
    """GET: the analysis jobs the caller may see (exactly those of the designs they may see)."""

    query_params = LIST

    @authenticated
    async def get(self) -> None:
        page = await self.jobs.list_visible(
            self.require_principal(), self.request.query_arguments, self.absolute_url(self.request.path)
        )
        self.write_json(page)


class JobHandler(JobsBase):
    """GET: one job."""

    @authenticated
    async def get(self, job_id: str) -> None:
        self.write_json(render_job(await self.jobs.get_visible(self.require_principal(), job_id)))


class JobStatusHandler(JobsBase):
    """GET: a job's status in the task-queue shape (state, result, error, task info)."""

    @authenticated
    async def get(self, job_id: str) -> None:
        self.write_json(render_status(await self.jobs.get_visible(self.require_principal(), job_id)))


class JobProgressHandler(JobsBase):
    """GET: a job's progress."""

    @authenticated
    async def get(self, job_id: str) -> None:
        doc = await self.jobs.get_visible(self.require_principal(), job_id)
        self.write_json({**render_progress(doc), "status": doc["status"]})


class JobCancelHandler(JobsBase):
    """POST: cancel a job; its worker is stopped at once here, or at the running process's next renewal."""

    @authenticated
    async def post(self, job_id: str) -> None:
        body = self.parse_body(JobCancelIn)
        runner = self.services.runner
        job, finished = await self.jobs.cancel(
            self.require_principal(),
            job_id,
            force=body.force,
            actor=self.actor,
            stop_local=runner.cancel_local if runner is not None else None,
        )
        if finished:
            self.write_json(
                {
                    "message": "Job cancelled successfully"
                    if job["status"] == "CANCELLED"
                    else f"The job finished with status {job['status']} before it could be cancelled.",
                    "status": job["status"],
                }
            )
        else:
            # Another process runs it: it kills the worker at its next lease renewal.
            wait = self.config.job_lease_seconds / 3
            self.write_json(
                {
                    "message": f"Cancellation requested; the server process running the job stops it "
                    f"within about {wait:g} seconds.",
                    "status": job["status"],
                    "cancel_requested": True,
                },
                status=202,
            )


class ActiveJobsHandler(JobsBase):
    """GET: the visible jobs running now."""

    @authenticated
    async def get(self) -> None:
        self.write_json(await self.jobs.active(self.require_principal()))


class JobMetricsHandler(JobsBase):
    """GET: counts per status and durations, per job type and overall."""

    query_params = DETAIL | {"job_type"}

    @authenticated
    async def get(self) -> None:
        job_type = self.get_query_argument("job_type", "") or None
        if job_type is not None and job_type not in JobType.__members__:
            raise ValidationFailed(
                "Invalid value for 'job_type'.",
                field_errors={"job_type": ["Must be one of: " + ", ".join(t.value for t in JobType) + "."]},
            )
        self.write_json(await self.jobs.metrics(self.require_principal(), job_type))


class JobFailuresHandler(JobsBase):
    """GET ?days=: the most frequent errors and the latest failures."""

    query_params = DETAIL | {"days"}

    @authenticated
    async def get(self) -> None:
        raw = self.get_query_argument("days", "7")
        if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= MAX_FAILURE_DAYS:
            raise ValidationFailed(
                "Invalid value for 'days'.",
                field_errors={"days": [f"Must be a whole number from 1 to {MAX_FAILURE_DAYS}."]},
            )
        self.write_json(await self.jobs.failures(self.require_principal(), int(raw)))


routes = [
    (r"/api/analysis-jobs/", JobListHandler),
    (r"/api/analysis-jobs/active/", ActiveJobsHandler),
    (r"/api/analysis-jobs/metrics/", JobMetricsHandler),
    (r"/api/analysis-jobs/failures/", JobFailuresHandler),
    (rf"/api/analysis-jobs/{UUID}/", JobHandler),
    (rf"/api/analysis-jobs/{UUID}/status/", JobStatusHandler),
    (rf"/api/analysis-jobs/{UUID}/progress/", JobProgressHandler),
    (rf"/api/analysis-jobs/{UUID}/cancel/", JobCancelHandler),
]
