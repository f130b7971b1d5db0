"""Use cases that routes and actors call: execute a job, maintain the fleet's job table."""
