"""The driver: flags, what they resolve to, the lease, the preflight and the job."""
