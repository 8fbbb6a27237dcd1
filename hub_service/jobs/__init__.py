"""The hub's GPU queue: jobs and waiting notebook requests, one order for both."""
