"""Definition-time validation: every wiring mistake is caught when the pipeline is built."""

import pytest

import asyncpipe as ap
from asyncpipe import DefinitionError


def fetch(item):
    return item


def parse(fetch):
    return fetch


def test_plain_functions_are_wired_by_parameter_name():
    pipe = ap.Pipeline([fetch, parse])
    assert [(s.name, s.kind) for s in pipe.plan.stages] == [("fetch", "source"), ("parse", "map")]
    assert pipe.plan["parse"].wiring == (("fetch", "fetch"),)
    assert pipe.plan["fetch"].downstream == ("parse",)


def test_order_of_definition_does_not_matter():
    pipe = ap.Pipeline([parse, fetch])
    assert pipe.plan.names == ("fetch", "parse")


def test_missing_input_suggests_close_name():
    @ap.stage(inputs={"data": "fetched"})
    def clean(data):
        return data

    with pytest.raises(
        DefinitionError, match=r"needs input 'fetched', which no stage provides\. Did you mean 'fetch'"
    ):
        ap.Pipeline([fetch, clean])


def test_unmatched_parameter_is_an_error_naming_the_stage():
    def clean(fetch, threshold):
        return fetch

    with pytest.raises(
        DefinitionError, match="Parameter 'threshold' of stage 'clean' matches no stage"
    ) as err:
        ap.Pipeline([fetch, clean])
    assert err.value.stage == "clean"


def test_run_params_and_defaults_fill_parameters():
    def clean(fetch, threshold, scale=2):
        return fetch

    pipe = ap.Pipeline([fetch, clean], params={"threshold": 3})
    assert pipe.plan["clean"].params == ("threshold",)


def test_duplicate_names():
    with pytest.raises(DefinitionError, match="Two stages are named 'fetch'"):
        ap.Pipeline([fetch, ap.stage(parse, name="fetch")])


def test_cycle_is_reported_with_its_path():
    @ap.stage(inputs={"x": "b"})
    def a(x):
        return x

    @ap.stage(inputs={"y": "a"})
    def b(y):
        return y

    with pytest.raises(DefinitionError, match=r"cycle: (a -> b -> a|b -> a -> b)"):
        ap.Pipeline([fetch, a, b])


def test_non_callable_stage():
    with pytest.raises(DefinitionError, match="must be functions; got 3"):
        ap.Pipeline([fetch, 3])  # type: ignore[list-item]


def test_empty_pipeline():
    with pytest.raises(DefinitionError, match="at least one stage"):
        ap.Pipeline([])


def test_source_must_take_an_item():
    @ap.source
    def nothing():
        return 1

    with pytest.raises(DefinitionError, match="must take the input item"):
        ap.Pipeline([nothing])


def test_source_cannot_consume_a_stage():
    @ap.source
    def s2(item, fetch):
        return item

    with pytest.raises(DefinitionError, match="sources only read input items"):
        ap.Pipeline([fetch, s2])


def test_map_stage_without_inputs_suggests_source():
    @ap.stage
    def orphan(x):
        return x

    with pytest.raises(DefinitionError, match="declare it with @source"):
        ap.Pipeline([fetch, orphan])


def test_sink_cannot_feed_other_stages():
    @ap.sink
    def save(fetch):
        return None

    def after(save):
        return save

    with pytest.raises(DefinitionError, match="sinks are terminal"):
        ap.Pipeline([fetch, save, after])


def test_joining_a_generator_source_with_another_source_is_rejected():
    @ap.source
    async def many(item):
        yield item

    def both(many, fetch):
        return 1

    with pytest.raises(DefinitionError, match="varying number of partitions"):
        ap.Pipeline([fetch, ap.source(many), both])


def test_unknown_executor_and_async_mismatch():
    with pytest.raises(DefinitionError, match="known executors"):
        ap.Pipeline([fetch, ap.stage(parse, executor="gpu")])
    with pytest.raises(DefinitionError, match="needs an async def"):
        ap.Pipeline([fetch, ap.stage(parse, executor="async")])


def test_bad_concurrency_and_retries():
    with pytest.raises(DefinitionError, match="concurrency=0"):
        ap.Pipeline([fetch, ap.stage(parse, concurrency=0)])
    with pytest.raises(DefinitionError, match="retries=-1"):
        ap.Pipeline([fetch, ap.stage(parse, retries=-1)])


def test_keep_must_name_known_stages():
    with pytest.raises(DefinitionError, match=r"keep names unknown stage 'pars'\. Did you mean 'parse'"):
        ap.Pipeline([fetch, parse], keep=["pars"])


def test_defaults_resolved_per_executor():
    async def afetch(item):
        return item

    pipe = ap.Pipeline([ap.source(afetch), ap.stage(parse, inputs={"fetch": "afetch"}, executor="process")])
    assert pipe.plan["afetch"].executor == "async"
    assert pipe.plan["afetch"].concurrency == 16
    assert pipe.plan["parse"].executor == "process"
    assert pipe.plan["parse"].retry.attempts == 1


def test_pipeline_defaults_and_configure():
    pipe = ap.Pipeline([fetch, parse], retries=2, concurrency=3)
    assert pipe.plan["parse"].retry.attempts == 3
    assert pipe.plan["parse"].concurrency == 3
    pipe2 = pipe.configure("parse", concurrency=9)
    assert pipe2.plan["parse"].concurrency == 9 and pipe.plan["parse"].concurrency == 3
    with pytest.raises(DefinitionError, match="No stage 'pars'"):
        pipe.configure("pars", concurrency=1)


def test_plan_reprs_are_informative():
    pipe = ap.Pipeline([fetch, parse], name="demo")
    text = str(pipe.plan)
    assert "Plan 'demo': 2 stages" in text and "fetch<-fetch" in text
    html = pipe._repr_html_()
    assert "<table>" in html and "parse" in html
    assert repr(pipe) == "<Pipeline 'demo': fetch -> parse>"
