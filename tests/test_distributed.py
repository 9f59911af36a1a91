"""config.distributed: when a job starts jax.distributed and what it refuses (no processes started here;
tests/test_pod_training.py runs real multi-process jobs)."""
import ml_collections as mlc
import pytest

from psa_jax.runtime import distributed
from psa_jax.training.config_schema import common_config


def _dist(**kw) -> mlc.ConfigDict:
    d = common_config().distributed
    for k, v in kw.items():
        d[k] = v
    return d


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, "slurm"),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),          # one task: nothing to join
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "mpi"),
    ({"OMPI_COMM_WORLD_SIZE": "1"}, None),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, "tpu"),
    ({"TPU_WORKER_HOSTNAMES": "t0"}, None),                      # a single-host TPU VM
    ({"SLURM_NTASKS": "abc", "SLURM_JOB_ID": "1"}, None),
])
def test_cluster_detection_from_the_environment(environ, expected):
    assert distributed.detect_cluster(environ) == expected


def test_a_plain_single_process_run_does_not_initialise(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert distributed.initialize(_dist(), environ={}) is False
    assert distributed.initialize(_dist(initialize="never"), environ={"OMPI_COMM_WORLD_SIZE": "4"}) is False
    assert calls == []


def test_explicit_values_and_detected_clusters_initialise(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(distributed.jax.config, "update", lambda *a: None)
    distributed.initialize(_dist(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1,
                                 heartbeat_timeout_s=30), environ={})
    assert calls[-1] == {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1,
                         "heartbeat_timeout_seconds": 30}
    distributed.initialize(_dist(), environ={"SLURM_JOB_ID": "1", "SLURM_NTASKS": "8"})
    assert calls[-1] == {"heartbeat_timeout_seconds": 100}  # JAX reads the SLURM environment itself
    distributed.initialize(_dist(initialize="always"), environ={})
    assert len(calls) == 3


@pytest.mark.parametrize("kw, match", [
    ({"coordinator_address": "h:1"}, r"\['num_processes', 'process_id'\] not"),
    ({"num_processes": 2, "process_id": 0}, r"\['coordinator_address'\] not"),
    ({"initialize": "sometimes"}, "is not one of 'auto', 'always', 'never'"),
    ({"initialize": "never", "process_id": 1}, "initialize='never' but"),
])
def test_inconsistent_settings_are_refused_with_the_keys(kw, match, monkeypatch):
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: pytest.fail("must not start"))
    with pytest.raises(ValueError, match=match):
        distributed.initialize(_dist(**kw), environ={})
