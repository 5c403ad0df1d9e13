"""Test setup: 8 CPU devices (set before JAX is imported) and a fresh default graph."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

import varstore as vs  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_graph():
    vs.reset_default_graph()
    saved = vs.config.soft_placement
    yield
    vs.config.soft_placement = saved
    vs.reset_default_graph()


@pytest.fixture
def compiles():
    """Counts XLA backend compilations while the test runs."""
    events = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield events
    jax.monitoring.unregister_event_duration_listener(listener)
