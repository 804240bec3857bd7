"""Settings shared by every test of the package."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# The machines that run `make test` are shared and have 2 cores: Hypothesis's "too slow" health
# check measures how fast examples are *generated*, which there depends on the neighbours' load,
# not on the code under test. The properties themselves keep their deadline=None settings.
settings.register_profile("bbproxy", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("bbproxy")
