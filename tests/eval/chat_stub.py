"""An OpenAI-compatible chat-completions stub on 127.0.0.1, shared by the judge and benchmark tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatStub:
    """Serves ``POST .../chat/completions`` with ``respond(body) -> (status, json_object)``; records every
    request body in ``requests`` and its headers in ``headers``. Use as a context manager, or
    ``start()`` / ``close()``."""

    def __init__(self, respond: Callable[[dict], tuple[int, dict]]) -> None:
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                outer.headers.append(dict(self.headers))
                status, obj = respond(body)
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> ChatStub:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> ChatStub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def chat_reply(content: str, n: int = 1) -> dict:
    """A chat-completions response body with ``n`` identical choices."""
    return {"choices": [{"message": {"role": "assistant", "content": content}}] * n}
