"""One stand-in OpenAI-compatible server for the fast tests: a real stdlib HTTP server on 127.0.0.1.

The fast tests of the served paths (the OpenAI client and engine, the generative judge in the
verifier, the score stage, GRPO's judge reward, the evaluation's LLM scorer) check plumbing: which
requests are sent, in what order, with which seeds, retries, caching, errors. They need a server
that speaks the protocol and answers predictably, not a model. Each test module subclasses
``StandInServer`` and scripts ``answer(path, body) -> (status, payload)``; the slow tests use real
``vllm serve`` instead.

``GET /v1/models`` lists ``models``; every ``POST`` body and its headers are recorded (in arrival
order, which is not request order: clients send concurrently).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chat_reply(text: str, completion_tokens: int = 3) -> tuple[int, dict]:
    """A 200 answer to ``/v1/chat/completions`` with one choice saying ``text``."""
    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}, "text": text}
    return 200, {"choices": [choice], "usage": {"completion_tokens": completion_tokens}}


def prompt_of(body: dict) -> str:
    """The prompt text of a completions body, or the first message's content of a chat body."""
    return body["messages"][0]["content"] if "messages" in body else body["prompt"]


class StandInServer:
    """Base class: serve ``answer`` on a free localhost port; use as a context manager."""

    models: tuple[dict, ...] = ({"id": "tiny"},)

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        raise NotImplementedError

    @property
    def prompts(self) -> list[str]:
        return [prompt_of(body) for body in self.bodies]

    def start(self) -> StandInServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> StandInServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"data": list(server.models)})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                self._send(*server.answer(self.path, body))

        return Handler
