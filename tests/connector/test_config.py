"""The connector's settings from ``kv_connector_extra_config``: the load mode."""

from __future__ import annotations

import pytest

from streamcheck.connector.config import ConnectorConfig


@pytest.mark.parametrize(("extra", "sync"), [
    ({}, False),  # auto: async (see ConnectorConfig's docstring for why)
    ({"load": "auto"}, False),
    ({"load": "async"}, False),
    ({"load": "sync"}, True),
    ({"backend": "disk", "load": "async"}, False),
])
def test_the_load_mode(extra, sync):
    assert ConnectorConfig.from_extra(extra).sync_loads is sync


@pytest.mark.parametrize(("extra", "message"), [
    ({"load": "eager"}, r"\['load'\]='eager': choose"),
    ({"backend": "disk", "load": "sync"}, "needs the host backend"),
    ({"backend": "redis", "load": "sync"}, "needs the host backend"),
])
def test_a_bad_load_mode_is_refused_naming_the_key(extra, message):
    with pytest.raises(ValueError, match=message):
        ConnectorConfig.from_extra(extra)


@pytest.mark.parametrize(("extra", "policy", "refused"), [
    ({"load": "sync"}, "fail", None),
    ({"load": "sync"}, "recompute", "not 'recompute'"),
    ({"load": "sync"}, None, "this vLLM does not have"),
    ({"load": "async"}, "recompute", None),
    ({}, None, None),
])
def test_sync_loads_need_the_fail_policy(extra, policy, refused):
    config = ConnectorConfig.from_extra(extra)
    if refused is None:
        config.check_failure_policy(policy)
    else:
        with pytest.raises(ValueError, match=refused):
            config.check_failure_policy(policy)


@pytest.mark.parametrize("key", ["trace", "idle_wait_ms"])
@pytest.mark.parametrize("value", [-1, 2.5, "100", True])
def test_a_bad_trace_size_or_idle_wait_is_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=rf"\['{key}'\]="):
        ConnectorConfig.from_extra({key: value})


def test_the_trace_is_off_unless_asked_for_and_idle_steps_wait_for_loads_by_default():
    assert ConnectorConfig.from_extra({}).trace == 0
    assert ConnectorConfig.from_extra({"trace": 500}).trace == 500
    assert ConnectorConfig.from_extra({}).idle_wait_ms == 20
    assert ConnectorConfig.from_extra({"idle_wait_ms": 0}).idle_wait_ms == 0
