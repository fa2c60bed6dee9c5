"""The chaos soak, short: every event once (kills, a pause, the coordinator stopped and
killed, an impostor on a worker's port, an abandoned large call, a busy neighbour, idle
connections) under load from two clients; no call is lost, answered twice or wrongly, and
the impostor receives no proof."""

import pytest

from distree.launch.chaos import EVENTS, model_expectations, run_soak


@pytest.mark.e2e
def test_no_call_is_lost_or_duplicated_through_kills_pauses_and_restarts(trained, tmp_path):
    run, splits = trained
    images = splits.test.images
    expected = model_expectations(run.path, images)
    r = run_soak(run.path, images, seconds=90, clients=2, script=list(EVENTS), log_dir=tmp_path, expected=expected)
    assert [e.split()[0] for _, e in r.events] == list(EVENTS)
    assert r.lost == 0 and r.duplicated == 0 and r.wrong == 0
    assert r.proofs_to_impostors == 0 and r.abandoned == 1
    assert r.answered > 0
    # Every call is counted under the case under way when it started.
    assert set(r.by_case) <= {"none", *EVENTS}
    assert sum(c["calls"] for c in r.by_case.values()) == r.calls
    assert sum(c["answered"] for c in r.by_case.values()) == r.answered
    assert set(r.errors) <= {"UNAVAILABLE"}, r.errors  # the coordinator's downtime, said as such
    assert all(v is not None for v in r.reuse_s.values()), r.reuse_s  # the restarted worker served again
