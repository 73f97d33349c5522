"""llama.cpp's HTTP server from the `xllamacpp` wheel, as a child process of a job.

Run as ``python -m runner.providers._llama_server CONFIG_JSON`` by `local.py`
(and by the tests' real-LLM server). The server lives in this child, never in
the job's process: a native crash then fails a call instead of the job, and
no native thread outlives the job.

The child

- binds a free port on 127.0.0.1 (port 0), requires the API key it finds in
  ``RUNNER_LLAMA_API_KEY``, and prints its address (``http://127.0.0.1:PORT``)
  as the only line on its stdout once the model is loaded and listening;
- sends everything else, llama.cpp's own log included, to its stderr (the
  parent points that at ``runs/<job_id>/local-server.log``);
- exits as soon as its stdin reaches end of file: when the parent closes it,
  and also when the parent dies, even by SIGKILL, since the kernel then
  closes the pipe. It watches from the start, so even a server still loading
  its model goes away with its parent.

CONFIG_JSON holds ``model`` (a GGUF path), ``alias`` (the model name the server
reports), ``context_size`` (tokens per parallel slot), ``parallel`` (slots)
and ``threads``.
"""

from __future__ import annotations

import json
import os
import sys
import threading

API_KEY_VARIABLE = "RUNNER_LLAMA_API_KEY"


def _exit_at_end_of_stdin() -> None:
    sys.stdin.buffer.read()
    # Skip native destructors and interpreter teardown: they may wait on server threads.
    os._exit(0)


def main(config_json: str) -> None:
    config = json.loads(config_json)
    api_key = os.environ.pop(API_KEY_VARIABLE)
    # Keep stdout for the address line alone: whatever native code prints goes to the log.
    address_out = os.dup(1)
    os.dup2(2, 1)
    threading.Thread(target=_exit_at_end_of_stdin, daemon=True).start()

    import xllamacpp  # type: ignore[import-untyped]

    params = xllamacpp.CommonParams()
    params.model.path = config["model"]
    params.model_alias = {config["alias"]}
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the OS picks a free port; listening_address says which
    params.api_keys = [api_key]
    params.n_parallel = config["parallel"]
    params.n_ctx = config["context_size"] * config["parallel"]
    params.cpuparams.n_threads = config["threads"]
    params.cpuparams_batch.n_threads = config["threads"]
    server = xllamacpp.Server(params)  # returns once the model is loaded and listening
    os.write(address_out, f"{server.listening_address}\n".encode())
    threading.Event().wait()  # serve until stdin closes


if __name__ == "__main__":
    main(sys.argv[1])
