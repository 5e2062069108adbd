"""The server's parts that need no model: the FIFO turnstile, request checking, and the API key gate."""

import threading

import pytest

from app.errors import Cancelled
from app.server.access import Gate, KeyRule, decide_key
from app.server.chat import ApiError, parse_chat_request
from app.sharing.turnstile import Turnstile
from app.sharing.auth import AuthError


def test_turnstile_serves_callers_in_arrival_order():
    turnstile, order = Turnstile(), []
    first = turnstile.acquire()
    threads = []

    def take_turn(n):
        ticket = turnstile.acquire()
        order.append(n)
        turnstile.release(ticket)

    for n in range(5):
        thread = threading.Thread(target=take_turn, args=(n,))
        thread.start()
        while turnstile.waiting < n + 1:  # each has taken its place before the next arrives
            threading.Event().wait(0.005)
        threads.append(thread)
    turnstile.release(first)
    for thread in threads:
        thread.join(10)
    assert order == [0, 1, 2, 3, 4]


def test_a_waiter_that_gives_up_leaves_the_queue():
    turnstile, cancel = Turnstile(), threading.Event()
    first = turnstile.acquire()
    errors = []

    def wait():
        try:
            turnstile.acquire(cancel)
        except Cancelled as err:
            errors.append(err)

    thread = threading.Thread(target=wait)
    thread.start()
    while turnstile.waiting < 1:
        threading.Event().wait(0.005)
    cancel.set()
    thread.join(10)
    assert errors and turnstile.waiting == 0
    turnstile.release(first)
    with turnstile.turn():  # free again
        pass


def test_requests_are_checked_and_messages_merged():
    chat = parse_chat_request({"model": "demo", "stop": "###", "max_completion_tokens": 5, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Cite."},
        {"role": "user", "content": [{"type": "text", "text": "doc"}, {"type": "text", "text": " part"}]},
        {"role": "user", "content": "question"}, {"role": "assistant", "content": "answer"},
        {"role": "user", "content": "again"}]})
    assert chat.system == "Be brief.\n\nCite."
    assert chat.users == ["doc part\n\nquestion", "again"] and chat.assistants == ["answer"]
    assert chat.stop == ["###"] and chat.max_tokens == 5 and chat.temperature == 0.0


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "demo", "messages": []}, "messages"),
    ({"model": "demo", "messages": [{"role": "tool", "content": "x"}]}, "messages"),
    ({"model": "demo", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
    ({"model": "demo", "messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]},
     "messages"),
    ({"model": "demo", "messages": [{"role": "user", "content": "x"}], "top_p": 2}, "top_p"),
    ({"model": "demo", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "demo", "messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5}, "stop"),
    ({"model": "demo", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
])
def test_bad_requests_name_the_parameter(body, param):
    with pytest.raises(ApiError) as err:
        parse_chat_request(body)
    assert err.value.status == 400 and err.value.param == param
    assert set(err.value.body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("param, value", [
    ("tools", [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]),
    ("tool_choice", "required"),
    ("tool_choice", {"type": "function", "function": {"name": "get_weather"}}),
    ("functions", [{"name": "get_weather"}]),
    ("function_call", "get_weather"),
    ("logprobs", True),
    ("top_logprobs", 5),
    ("logit_bias", {"1234": 100}),
    ("frequency_penalty", 0.5),
    ("presence_penalty", -1),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
    ("prediction", {"type": "content", "content": "x"}),
    ("web_search_options", {"search_context_size": "low"}),
    ("reasoning_effort", "high"),
])
def test_unsupported_parameters_are_refused_by_name_not_ignored(param, value):
    with pytest.raises(ApiError) as err:
        parse_chat_request({"model": "demo", "messages": [{"role": "user", "content": "x"}], param: value})
    assert err.value.status == 400 and err.value.param == param and err.value.code == "unsupported_parameter"
    assert "not supported" in err.value.message and param in err.value.message


def test_values_that_ask_for_nothing_pass():
    """What client libraries send by default (and OpenAI's own defaults) is not an unsupported request."""
    chat = parse_chat_request({"model": "demo", "messages": [{"role": "user", "content": "x"}], "tools": [],
                               "tool_choice": "none", "logprobs": False, "frequency_penalty": 0.0,
                               "presence_penalty": 0, "modalities": ["text"], "top_logprobs": None,
                               "response_format": {"type": "text"}, "user": "me", "metadata": {"a": "b"}})
    assert chat.users == ["x"]


def test_limits_are_printed_as_whole_numbers():
    with pytest.raises(ApiError) as err:
        parse_chat_request({"model": "demo", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2**40})
    assert "from 1 to 2,147,483,648" in err.value.message and "e+" not in err.value.message
    with pytest.raises(ApiError) as err:
        parse_chat_request({"model": "demo", "messages": [{"role": "user", "content": "x"}], "seed": 2**70})
    assert "-9,223,372,036,854,775,808 to 9,223,372,036,854,775,807" in err.value.message
    with pytest.raises(ApiError) as err:
        parse_chat_request({"model": "demo", "messages": [{"role": "user", "content": "x"}], "top_p": 1.5})
    assert "from 0 to 1," in err.value.message


def test_a_key_is_made_when_exposed_and_read_from_the_environment(monkeypatch):
    assert decide_key(None, exposed=False).key is None
    made = decide_key(None, exposed=True)
    assert made.key.startswith("omnibus-") and made.key in made.notice
    monkeypatch.setenv("OMNIBUS_TEST_KEY", "s3cret")
    assert decide_key("OMNIBUS_TEST_KEY", exposed=True).key == "s3cret"
    with pytest.raises(AuthError, match="OMNIBUS_TEST_UNSET"):
        decide_key("OMNIBUS_TEST_UNSET", exposed=True)


def test_the_gate_checks_the_key_and_locks_out_after_repeated_wrong_keys():
    from app.sharing.auth import _client_address

    token = _client_address.set("192.0.2.7")  # a caller on the network: this computer itself is never locked out
    try:
        gate = Gate(KeyRule("right-key"))
        assert gate.check({"authorization": "Bearer right-key"}) is None
        assert gate.check({"x-api-key": "right-key"}) is None
        assert gate.check({}).status == 401
        for _ in range(5):
            assert gate.check({"authorization": "Bearer wrong"}).code == "invalid_api_key"
        locked = gate.check({"authorization": "Bearer right-key"})
        assert locked.status == 429  # the same lock-out as the login: the right key too, for a while
    finally:
        _client_address.reset(token)  # later tests in this process are on this computer again


def test_without_a_key_only_requests_to_this_computer_pass():
    gate = Gate(KeyRule(None))
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost"):
        assert gate.check({"host": host}) is None
    assert gate.check({"host": "attacker.example:8000"}).status == 403  # DNS rebinding
