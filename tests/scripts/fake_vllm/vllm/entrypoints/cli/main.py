"""``python -m vllm.entrypoints.cli.main serve MODEL --port N ...``: the fake server. With
``FAKE_VLLM_WRONG`` set, prompts whose token sum is odd get one wrong token; with
``FAKE_VLLM_CRASH`` set, it stops before serving."""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from vllm import answer


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            self.reply(b"")
        else:
            self.reply(b'vllm:num_preemptions_total{engine="0"} 0.0\n')

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        tokens = answer(request["prompt"], request["max_tokens"])
        if os.environ.get("FAKE_VLLM_WRONG") and sum(request["prompt"]) % 2:
            tokens[3] += 1
        self.reply(json.dumps({"choices": [{"token_ids": tokens}]}).encode())


if __name__ == "__main__":
    args = sys.argv[1:]
    assert args[0] == "serve", args
    if os.environ.get("FAKE_VLLM_CRASH"):
        sys.exit("fake vllm: crashed on start")
    port = int(args[args.index("--port") + 1])
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
