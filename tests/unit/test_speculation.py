"""API speculative execution (`@lp.function(num_api_spec_tokens=N)`, lmprog/speculation.py)
against a scripted backend: which gens are served from text written ahead, and which send a
request of their own. The real-engine tests are in tests/integration/test_sglang_parity_engines.py.
"""

from __future__ import annotations

import pytest

import lmprog as lp
from lmprog.testing import ScriptedBackend

CHARACTER = " Ada\nBirthday: 1815\nJob: mathematician\nName: Bob"


def character(s, job_literal="\nJob:", job_temperature=None):
    s += "Name:" + lp.gen("name", stop="\n")
    s += "\nBirthday:" + lp.gen("birthday", stop="\n")
    s += job_literal + lp.gen("job", stop="\n", temperature=job_temperature)


def test_one_request_fills_every_gen_the_model_wrote_ahead() -> None:
    backend = ScriptedBackend(lambda request: CHARACTER)
    state = lp.function(num_api_spec_tokens=48)(character).run(backend=backend)
    assert (state["name"], state["birthday"], state["job"]) == (" Ada", " 1815", " mathematician")
    assert len(backend.requests) == 1
    request = backend.requests[0]
    assert request.sampling.max_new_tokens == 48 and not request.sampling.stop
    assert state.text() == "Name: Ada\nBirthday: 1815\nJob: mathematician"
    assert state.get_meta_info("name")["speculative"] == "requested"
    assert state.get_meta_info("job")["speculative"] == "served from the text ahead"


def test_without_speculation_each_gen_sends_its_own_request() -> None:
    backend = ScriptedBackend(lambda request: CHARACTER)
    state = lp.function(character).run(backend=backend)
    assert len(backend.requests) == 3
    assert state["name"] == " Ada"


def test_a_literal_the_model_did_not_write_sends_a_new_request() -> None:
    backend = ScriptedBackend(lambda request: CHARACTER)
    program = lp.function(num_api_spec_tokens=48)(character)
    state = program.run("\nOccupation:", backend=backend)
    assert len(backend.requests) == 2
    assert backend.requests[1].prompt.endswith("Occupation:")
    assert state["birthday"] == " 1815"


def test_other_sampling_settings_send_a_new_request() -> None:
    backend = ScriptedBackend(lambda request: CHARACTER)
    program = lp.function(num_api_spec_tokens=48)(character)
    program.run(job_temperature=0.7, backend=backend)
    assert len(backend.requests) == 2
    assert backend.requests[1].sampling.temperature == 0.7


def test_constrained_gens_and_selects_are_not_speculated() -> None:
    @lp.function(num_api_spec_tokens=48)
    def typed(s):
        s += "Name:" + lp.gen("name", stop="\n")
        s += "\nAge:" + lp.gen("age", regex="[0-9]+")
        s += "\nBirthday:" + lp.gen("birthday", stop="\n")

    backend = ScriptedBackend(lambda request: "36" if request.constraint else CHARACTER)
    state = typed.run(backend=backend)
    assert state["age"] == "36"
    assert [r.constraint is not None for r in backend.requests] == [False, True, False]
    assert state["birthday"] == " Ada"  # after the constrained gen, a fresh speculation


def test_a_stop_the_model_never_wrote_ends_at_the_end_of_its_text() -> None:
    @lp.function(num_api_spec_tokens=48)
    def short(s):
        s += "Name:" + lp.gen("name", stop="\n")

    backend = ScriptedBackend(lambda request: " Ada")
    assert short.run(backend=backend)["name"] == " Ada"
    assert len(backend.requests) == 1


def test_forks_speculate_on_their_own() -> None:
    @lp.function(num_api_spec_tokens=48)
    def branches(s):
        s += "Characters.\n"
        forks = s.fork(2)
        for f in forks:
            character(f)
        forks.join()
        s += "Name:" + lp.gen("again", stop="\n")

    backend = ScriptedBackend(lambda request: CHARACTER)
    state = branches.run(backend=backend)
    assert len(backend.requests) == 3  # one per branch, one after the join
    assert state["again"] == " Ada"


def test_a_bad_token_count_is_refused_at_definition() -> None:
    with pytest.raises(TypeError, match="num_api_spec_tokens"):
        lp.function(num_api_spec_tokens="64")(character)
    with pytest.raises(TypeError, match="num_api_spec_tokens"):
        lp.function(num_api_spec_tokens=-1)(character)
