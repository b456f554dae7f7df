"""
Tests for txgearmand.
"""

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover
    pass
else:
    # Deterministic, as Twisted's own suite: property tests never flake in CI.
    settings.register_profile(
        "txgearmand",
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
        max_examples=200,
    )
    settings.load_profile("txgearmand")
