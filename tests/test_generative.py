"""The generative identifier: strict parsing, repair, cache, and the HTTP path against real servers."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tokenforget.data.records import Sample
from tokenforget.identify.generative import Generative, ReplyError, openai_chat, parse_reply

SAMPLES = [
    Sample(
        answer="Basil Mahfouz Al-Kuwaiti was born in Kuwait City. Kuwait City is hot.",
        question="Where?",
        id="a",
    ),
    Sample(answer="He wrote 'Promise by the Seine'.", question="What did he write?", id="b"),
]


def test_parse_reply_is_strict():
    assert parse_reply('{"target_words": ["Kuwait City", "1956"]}') == ["Kuwait City", "1956"]
    assert parse_reply('```json\n{"target_words": ["x"]}\n```') == ["x"]
    assert parse_reply('[{"question": "q", "answer": "a", "target_words": ["y"]}]') == ["y"]
    for junk in ("Sure! The words are Kuwait.", '{"words": ["x"]}', '{"target_words": "x"}', ""):
        with pytest.raises(ReplyError):
            parse_reply(junk)


def scripted(replies):
    calls = []

    def chat(messages):
        calls.append(messages)
        return replies[len(calls) - 1] if len(calls) <= len(replies) else replies[-1]

    return chat, calls


def test_spans_at_every_occurrence_repair_once_and_cache(tmp_path):
    chat, calls = scripted(['{"target_words": ["Kuwait City", "Basil Mahfouz Al-Kuwaiti", "Mars"]}'])
    ident = Generative(chat, "scripted", tmp_path / "cache", concurrency=1)
    (out,) = ident.identify(SAMPLES[:1])
    assert [out.answer[s.start : s.end] for s in out.spans] == [
        "Basil Mahfouz Al-Kuwaiti",
        "Kuwait City",
        "Kuwait City",
    ]
    assert out.meta["target_words_not_in_answer"] == ["Mars"]
    assert len(calls) == 1
    ident.identify(SAMPLES[:1])
    assert len(calls) == 1  # cached on disk: never sent twice
    # junk first, valid after the repair request
    chat, calls = scripted(["I think: Seine", '{"target_words": ["Promise by the Seine"]}'])
    (out,) = Generative(chat, "scripted", None).identify(SAMPLES[1:])
    assert [out.answer[s.start : s.end] for s in out.spans] == ["Promise by the Seine"]
    assert len(calls) == 2 and calls[1][-1]["content"].startswith("Your reply was not valid JSON")
    # junk twice: the sample is recorded as failed, never silently labelled
    chat, calls = scripted(["no", "still no"])
    ident = Generative(chat, "scripted", None)
    (out,) = ident.identify(SAMPLES[1:])
    assert (
        out.spans == ()
        and ident.failures[0]["id"] == "b"
        and "after one repair request" in ident.failures[0]["error"]
    )


def test_runs_are_cached_separately_and_concurrent(tmp_path):
    seen = []
    lock = threading.Lock()

    def chat(messages):
        with lock:
            seen.append(threading.get_ident())
        time.sleep(0.05)
        return '{"target_words": ["Kuwait"]}'

    ident = Generative(chat, "scripted", tmp_path / "c", concurrency=4)
    ident.identify(SAMPLES * 4, run=0)
    assert len(set(seen)) > 1  # requests in flight together
    before = len(seen)
    ident.identify(SAMPLES, run=1)
    assert len(seen) == before + 2  # another run is another cache entry


class _Handler(BaseHTTPRequestHandler):
    mode = "junk"
    requests = 0

    def log_message(self, *args):
        pass

    def do_POST(self):
        type(self).requests += 1
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        if self.mode == "stall" and type(self).requests == 1:
            time.sleep(3)  # past the client's timeout: it must retry
        content = "not json at all" if self.mode == "junk" else '{"target_words": ["Kuwait City"]}'
        body = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(mode):
    handler = type("H", (_Handler,), {"mode": mode, "requests": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler


def test_http_server_that_returns_junk_is_repaired_once_then_reported():
    server, handler = serve("junk")
    try:
        chat = openai_chat(f"http://127.0.0.1:{server.server_port}/v1", "m", None, 5, 0, 0.0)
        ident = Generative(chat, "m", None, concurrency=1)
        (out,) = ident.identify(SAMPLES[:1])
        assert out.spans == () and len(ident.failures) == 1
        assert handler.requests == 2  # the request and one repair
    finally:
        server.shutdown()


def test_http_server_that_stalls_is_retried_by_the_client():
    server, handler = serve("stall")
    try:
        chat = openai_chat(f"http://127.0.0.1:{server.server_port}/v1", "m", None, 1.0, 2, 0.0)
        (out,) = Generative(chat, "m", None, concurrency=1).identify(SAMPLES[:1])
        assert [out.answer[s.start : s.end] for s in out.spans] == ["Kuwait City", "Kuwait City"]
        assert handler.requests == 2  # timed out once, retried with backoff
    finally:
        server.shutdown()


class _Refusing(_Handler):
    status = 401

    def do_POST(self):
        type(self).requests += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"error": {"message": "nope", "type": "invalid_request_error"}}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("status", [400, 401])
def test_a_rejected_sample_is_recorded_and_a_refused_key_stops_the_run(status, monkeypatch):
    from tokenforget.errors import ConfigError

    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    handler = type("R", (_Refusing,), {"status": status, "requests": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        chat = openai_chat(f"http://127.0.0.1:{server.server_port}/v1", "m", "MY_KEY", 5, 0, 0.0)
        ident = Generative(chat, "m", None, concurrency=1)
        if status == 400:
            (out,) = ident.identify(SAMPLES[:1])
            assert out.spans == () and "rejected the request: HTTP 400" in ident.failures[0]["error"]
        else:
            with pytest.raises(ConfigError, match=r"refused the API key \(HTTP 401\)") as info:
                ident.identify(SAMPLES[:1])
            assert "sk-secret-123" not in str(info.value)
    finally:
        server.shutdown()


def test_api_key_comes_from_the_environment_and_is_not_in_the_settings(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    server, _ = serve("ok")
    try:
        chat = openai_chat(f"http://127.0.0.1:{server.server_port}/v1", "m", "MY_KEY", 5, 0, 0.0)
        ident = Generative(chat, "m", None)
        ident.identify(SAMPLES[:1])
        assert "sk-secret-123" not in json.dumps(ident.settings())
    finally:
        server.shutdown()


@pytest.mark.slow
def test_real_llama_cpp_server_serving_smollm2(tmp_path):
    """The whole HTTP path against a real OpenAI-compatible server (xllamacpp, the embedded GGUF).
    A 135M model may or may not produce valid JSON: each sample must end labelled or recorded as
    failed, and the cache must hold every reply."""
    xllamacpp = pytest.importorskip("xllamacpp")
    from tokenforget import models

    params = xllamacpp.CommonParams()
    params.model.path = str(models.embedded_gguf_path())
    params.n_ctx = 4096
    params.n_parallel = 2
    params.cpuparams.n_threads = 2
    params.port = 0
    server = xllamacpp.Server(params)
    address = server.listening_address
    chat = openai_chat(f"{address}/v1", "smollm2", None, 120, 1, 0.0, max_tokens=128)
    ident = Generative(chat, "smollm2", tmp_path / "cache", concurrency=2)
    out = ident.identify(SAMPLES)
    failed = {f["id"] for f in ident.failures}
    for sample in out:
        assert sample.id in failed or sample.spans is not None
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2
    again = Generative(lambda m: pytest.fail("sent twice"), "smollm2", tmp_path / "cache").identify(SAMPLES)
    assert [s.spans for s in again] == [s.spans for s in out]
