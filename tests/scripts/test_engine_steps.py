"""``engine_steps.py``: the engine's steps in each warm request, whichever connector."""

from __future__ import annotations

from types import SimpleNamespace

from tests.scripts.script_modules import load_script

engine_steps = load_script("engine_steps")

MS = 1_000_000


def test_a_request_s_steps_say_when_its_load_was_reported_and_its_forward_ran():
    records = [
        [0 * MS, "schedule+", 0], [1 * MS, "schedule-", 0],  # before the window: not counted
        [10 * MS, "add_request+", 0], [10 * MS, "add_request-", 0],
        [11 * MS, "schedule+", 0], [12 * MS, "schedule-", 0],  # the load issued
        [12 * MS, "execute+", 0], [15 * MS, "execute-", 0],
        [15 * MS, "update+", 0], [16 * MS, "update-", 0],
        [16 * MS, "schedule+", 0], [17 * MS, "schedule-", 0],
        [17 * MS, "execute+", 0], [18 * MS, "execute-", 0],
        [18 * MS, "update+", 1], [19 * MS, "update-", 0],  # the load reported
        [19 * MS, "schedule+", 0], [21 * MS, "schedule-", 1],  # the forward scheduled
        [21 * MS, "execute+", 1],
        *[[(22 + 2 * i) * MS, "layer+", 0] for i in range(8)],  # 8 layers, 2 ms apart
        [39 * MS, "execute-", 0],
        [39 * MS, "sample+", 0], [40 * MS, "sample-", 0],
        [40 * MS, "update+", 0], [41 * MS, "update-", 0],
    ]
    row = engine_steps.request_steps(records, (10 * MS, 43 * MS))
    assert row["total"] == 33.0 and row["arrive"] == 0.0
    assert row["loads_reported"] == 8.0 and row["to_forward"] == 9.0
    assert row["forward"] == 18.0 and row["after_forward"] == 3.0 and row["per_layer"] == 2.0
    assert row["schedules"] == 3
    assert row["steps"] == [[1.0, 1.0, 0], [6.0, 1.0, 0], [9.0, 2.0, 1]]
    summary = engine_steps.summarize(records, [(10 * MS, 43 * MS), (40 * MS, 41 * MS)])
    assert summary["median"]["schedules"] == 1.5  # the second window holds no schedule
    assert summary["median"]["forward"] == 18.0  # the second has none: not counted


def test_after_the_forward_counts_from_its_own_sample_not_a_later_steps():
    records = [
        [0, "schedule+", 0], [1 * MS, "schedule-", 1],
        [1 * MS, "execute+", 1], [5 * MS, "execute-", 0],
        [6 * MS, "schedule+", 0], [7 * MS, "schedule-", 0],  # the next step, queued first
        [8 * MS, "sample+", 0], [9 * MS, "sample-", 0],  # the next step's: not the forward's
    ]
    assert engine_steps.request_steps(records, (0, 10 * MS))["after_forward"] == 5.0
    records[4:4] = [[5 * MS, "sample+", 0], [5.5 * MS, "sample-", 0]]
    assert engine_steps.request_steps(records, (0, 10 * MS))["after_forward"] == 4.5


def test_with_no_scheduler_traced_the_steps_are_unknown_not_zero():
    worker_only = [[1 * MS, "execute+", 16], [9 * MS, "execute-", 0]]
    row = engine_steps.request_steps(worker_only, (0, 10 * MS))
    assert row["schedules"] is None and row["forward"] == 8.0 and row["to_forward"] is None
    assert engine_steps.summarize(worker_only, [(0, 10 * MS)])["median"]["schedules"] is None


def test_tracing_wraps_the_runner_and_schedulers_and_stop_puts_their_methods_back(
        monkeypatch):
    class Runner:
        def execute_model(self, scheduler_output):
            return "out"

        def sample_tokens(self, grammar):
            return "sampled"

    class Sched:
        def schedule(self):
            return SimpleNamespace(total_num_scheduled_tokens=5)

        def update_from_output(self, scheduler_output, model_output):
            return {}

        def add_request(self, request):
            return None

    class Connector:
        def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
            return None

    worker = SimpleNamespace(model_runner=Runner())
    sched, connector = Sched(), Connector()
    monkeypatch.setattr(engine_steps, "_schedulers", lambda: [sched])
    monkeypatch.setattr(engine_steps, "_connector", lambda: connector)
    assert engine_steps.start(worker) == 1
    monkeypatch.setattr(engine_steps, "_schedulers", list)  # stop() unwraps what start found
    out = sched.schedule()
    worker.model_runner.execute_model(scheduler_output=out)  # by name, as well as by position
    connector.save_kv_layer("layers.0", None, None)
    sched.update_from_output(out, SimpleNamespace(
        kv_connector_output=SimpleNamespace(finished_recving={"a", "b"})))
    records = engine_steps.stop(worker)
    assert [(what, detail) for _ns, what, detail in records] == [
        ("schedule+", 0), ("schedule-", 5), ("execute+", 5), ("execute-", 0),
        ("layer+", 0), ("layer-", 0), ("update+", 2), ("update-", 0)]
    assert "schedule" not in vars(sched) and "execute_model" not in vars(worker.model_runner)
    assert "save_kv_layer" not in vars(connector)
    assert sched.schedule().total_num_scheduled_tokens == 5
    assert not hasattr(worker, "_engine_steps") and engine_steps.stop(worker) == []
