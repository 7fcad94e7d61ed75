"""predict reports its stages to a progress callback, and a callback that raises ends it (Cancel)."""
import pytest

from palnet.pipeline import predict


def test_stages_reported_in_order(model, sample):
    sample = sample[0]
    seen = []
    predict(sample, model, progress=lambda stage, fraction: seen.append((stage, fraction)))
    stages = [s for s, _ in seen]
    for name in ("cleanup", "alignment", "sampling", "network", "snapping", "done"):
        assert name in stages
    assert stages.index("cleanup") < stages.index("alignment") < stages.index("network") < stages.index("done")
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


class Cancelled(Exception):
    pass


def test_raising_callback_cancels(model, sample):
    sample = sample[0]
    def cancel_at_network(stage, fraction):
        if stage == "network":
            raise Cancelled()
    with pytest.raises(Cancelled):
        predict(sample, model, progress=cancel_at_network)
