"""Every Ray runtime the tests start — in-process, `ray start` test clusters, `nas search` subprocesses — listens
on 127.0.0.1 only (see nas.engine.run.local_ray_on_loopback); subprocesses inherit it through os.environ."""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
