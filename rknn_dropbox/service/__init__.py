"""The long-running service: the daemon loop, recovery, the worker pool and its processes, systemd, reload."""
