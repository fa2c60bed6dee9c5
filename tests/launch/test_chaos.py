"""The chaos soak, short: a worker killed and one paused, the coordinator stopped and one
killed, under load from two clients; no call is lost or answered twice."""

import pytest

from distree.launch.chaos import EVENTS, run_soak


@pytest.mark.e2e
def test_no_call_is_lost_or_duplicated_through_kills_pauses_and_restarts(trained, tmp_path):
    run, splits = trained
    r = run_soak(run.path, splits.test.images, seconds=60, clients=2, script=list(EVENTS), log_dir=tmp_path)
    assert [e.split()[0] for _, e in r.events] == list(EVENTS)
    assert r.lost == 0 and r.duplicated == 0
    assert r.answered > 0
    assert set(r.errors) <= {"UNAVAILABLE"}, r.errors  # the coordinator's downtime, said as such
    assert all(v is not None for v in r.reuse_s.values()), r.reuse_s  # the restarted worker served again
