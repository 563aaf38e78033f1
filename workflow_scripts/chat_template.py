"""Chat-template check: the reference GGUF carries its source's chat template, and llama.cpp turns
fixed conversations into the same tokens as transformers does on the source.

A GGUF with a missing or altered ``tokenizer.chat_template`` loads, tokenizes and passes every
quality gate, yet every chat client then prompts it in a format it was not trained on. So, for a
model whose source has a chat template:

1. the GGUF's templates (``tokenizer.chat_template`` and any named ``tokenizer.chat_template.<name>``)
   must equal the source's, character for character;
2. a fixed set of conversations (system + user, several turns with assistant replies, a user turn
   alone, and a tool call when the template mentions tools) is rendered by llama.cpp's own Jinja
   engine exactly as it serves chats: ``llama-server``'s ``/apply-template`` endpoint (the pinned
   llama.cpp renders with ``--jinja`` by default in llama-server and llama-cli; only the legacy
   llama-completion defaults to the built-in non-Jinja formats of ``llama_chat_apply_template``,
   which do not run the template at all but recognise a known family by its text). The prompt is
   tokenized as the server tokenizes it (special tokens parsed, BOS added when the vocabulary says
   so; llama.cpp drops a BOS the template wrote itself). The same conversation goes through
   transformers' ``apply_chat_template(..., tokenize=True)`` on the source tokenizer (an HF-format
   source), or, for a GGUF source, transformers' template renderer on the source's template with
   the text tokenized by the source GGUF's own tokenizer (transformers' GGUF tokenizer export loses
   SmolLM2's digit splitting and BOS/EOS). The ids must be equal; the first differing position is
   reported with both sides' tokens around it;
3. an instruct model (one with a template) answers a short chat turn greedily through the rendered
   prompt, and must end its turn with the template's end-of-turn token within the token budget.

A model whose source has no template gets "not applicable". A failure is a verdict with reasons in
the record (and in the model's validation report), not a stopped workflow; a template llama.cpp's
engine cannot parse or render is such a finding too.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.checksums import verify
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.gguf_header import read_gguf_header
from workflow_scripts.tokenizer_parity import difference_at, first_difference, load_llama_vocab, token_pieces
from workflow_scripts.tool_step import tool_path

TEMPLATE_KEY = "tokenizer.chat_template"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                       "required": ["city"]},
    },
}
SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer briefly."}
CONVERSATIONS: tuple[tuple[str, list[dict[str, Any]]], ...] = (
    ("system and user", [SYSTEM, {"role": "user", "content": "What is the capital of France?"}]),
    ("several turns", [SYSTEM, {"role": "user", "content": "Name a primary colour."},
                       {"role": "assistant", "content": "Red."},
                       {"role": "user", "content": "And another one, with 2 examples: café, naïve?"}]),
    ("user alone", [{"role": "user", "content": "Hello!\nHow are you today?"}]),
)
TOOL_CONVERSATION = ("tool call", [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "name": "get_weather", "content": "{\"temperature_c\": 18, \"sky\": \"clear\"}"},
])
SANITY_TURN = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
# An assistant reply whose end shows the template's end-of-turn token (the token right after it); a
# user turn follows, as llama-server continues a chat that ends with an assistant message instead.
END_OF_TURN_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
                     {"role": "user", "content": "Bye"}]
SERVER_START_SECONDS = 600


def mentions_tools(template: str) -> bool:
    """Whether a template does anything with tools (then the tool-call conversation is rendered)."""
    return "tools" in template or "tool_calls" in template


def conversations(template: str) -> list[tuple[str, list[dict[str, Any]], list[dict] | None]]:
    """The fixed conversations for this template: (name, messages, tools)."""
    fixed: list[tuple[str, list[dict[str, Any]], list[dict] | None]] = [(n, m, None) for n, m in CONVERSATIONS]
    if mentions_tools(template):
        fixed.append((*TOOL_CONVERSATION, [WEATHER_TOOL]))
    return fixed


def gguf_templates(metadata: dict[str, Any]) -> dict[str, str]:
    """A GGUF's chat templates by name: ``default`` for ``tokenizer.chat_template``, ``<name>`` for
    ``tokenizer.chat_template.<name>`` (convert_hf_to_gguf.py writes named templates so)."""
    found = {"default": metadata[TEMPLATE_KEY]} if TEMPLATE_KEY in metadata else {}
    prefix = TEMPLATE_KEY + "."
    found.update({k[len(prefix):]: v for k, v in metadata.items() if k.startswith(prefix)})
    return found


def hf_templates(tokenizer) -> dict[str, str]:
    """An HF tokenizer's chat templates by name (a single template is ``default``)."""
    template = tokenizer.chat_template
    if template is None:
        return {}
    return dict(template) if isinstance(template, dict) else {"default": template}


def template_differences(source: dict[str, str], gguf: dict[str, str]) -> list[str]:
    """Why the GGUF's templates are not the source's: missing, extra or changed ones (with the first
    differing character of a changed one)."""
    reasons = []
    for name in sorted(set(source) | set(gguf)):
        label = TEMPLATE_KEY if name == "default" else f"{TEMPLATE_KEY}.{name}"
        if name not in gguf:
            reasons.append(f"{label} is missing from the GGUF (the source has a {len(source[name])}-character template)")
        elif name not in source:
            reasons.append(f"{label} is in the GGUF but not in the source")
        elif source[name] != gguf[name]:
            at = first_difference(source[name], gguf[name])
            reasons.append(f"{label} differs from the source's at character {at}: source "
                           f"{source[name][max(0, at - 20):at + 20]!r}, GGUF {gguf[name][max(0, at - 20):at + 20]!r}")
    return reasons


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class LlamaServer:
    """A running ``llama-server`` of the pinned build on a private Unix socket (no TCP port)."""

    def __init__(self, sock: str, proc: subprocess.Popen, log: Path):
        self.sock, self.proc, self.log = sock, proc, log

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 120) -> tuple[int, Any]:
        conn = _UnixHTTPConnection(self.sock, timeout)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read().decode("utf-8", errors="replace")
        finally:
            conn.close()
        try:
            return response.status, json.loads(data)
        except json.JSONDecodeError:
            return response.status, data

    def apply_template(self, messages: list[dict], tools: list[dict] | None) -> str:
        """The prompt llama-server makes of a chat request; UserError with the server's message when it
        cannot render it."""
        body: dict[str, Any] = {"messages": _openai_messages(messages), "add_generation_prompt": True}
        if tools:
            body["tools"] = tools
        status, answer = self.request("POST", "/apply-template", body)
        if status != 200 or not isinstance(answer, dict) or "prompt" not in answer:
            message = answer.get("error", {}).get("message", answer) if isinstance(answer, dict) else answer
            raise UserError(f"llama.cpp could not render it (HTTP {status}): {message}")
        return answer["prompt"]


def server_errors(log: Path, start: int, most: int = 12) -> str:
    """What went wrong in this run of llama-server (its log from byte ``start``): the lines from its
    first error line on (llama.cpp marks them `` E ``; a template error shows the template's source
    with a caret), at most ``most`` of them, else the log's last lines."""
    with open(log, errors="replace") as handle:
        handle.seek(start)
        lines = handle.read().splitlines()
    first = next((i for i, line in enumerate(lines) if " E " in line), None)
    shown = lines[first:first + most] if first is not None else lines[-most:]
    return "\n".join("    " + line for line in shown)


def _openai_messages(messages: list[dict]) -> list[dict]:
    """Messages as an OpenAI-style client sends them: tool-call arguments as a JSON string (llama.cpp
    turns them back into an object for templates that expect one, as transformers' callers pass it)."""
    out = []
    for message in messages:
        calls = [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}}
                 for c in message.get("tool_calls", [])]
        out.append({**message, "tool_calls": calls} if calls else message)
    return out


@contextmanager
def llama_server(stamp: Path, gguf: Path, threads: int, log: Path) -> Iterator[LlamaServer]:
    """Start llama-server on ``gguf`` (chat templates rendered with --jinja, as it serves by default),
    wait until the model is loaded, stop it afterwards. UserError with the log's tail when it exits
    before it is ready (e.g. its Jinja engine cannot parse the template)."""
    with tempfile.TemporaryDirectory(prefix="gguf-forge-chat-") as tmp:
        sock = str(Path(tmp) / "llama.sock")
        cmd = [str(tool_path(stamp, "llama-server")), "-m", str(gguf), "--host", sock, "--jinja", "--no-webui",
               "--no-warmup", "-c", "2048", "-np", "1", "-t", str(threads)]
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as out:
            print("+ " + " ".join(cmd), file=out, flush=True)
            start = out.tell()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        server = LlamaServer(sock, proc, log)
        try:
            deadline = time.monotonic() + SERVER_START_SECONDS
            while True:
                if proc.poll() is not None:
                    raise UserError(f"llama-server exited ({proc.returncode}) before it was ready ({log}):\n"
                                    + server_errors(log, start))
                if Path(sock).exists():
                    try:
                        status, _ = server.request("GET", "/health", timeout=10)
                    except OSError:
                        status = None
                    if status == 200:
                        break
                if time.monotonic() > deadline:
                    raise UserError(f"llama-server did not load {gguf} within {SERVER_START_SECONDS} s (see {log})")
                time.sleep(0.1)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def llama_cpp_ids(vocab, prompt: str) -> list[int]:
    """The prompt's ids as llama-server tokenizes a chat prompt: special tokens parsed, BOS added when
    the vocabulary adds one."""
    return vocab.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)


class HFSide:
    """transformers' rendering of the source's template, tokenized by the source's tokenizer."""

    def __init__(self, render: Callable[[list[dict], list[dict] | None], list[int]], templates: dict[str, str]):
        self.render, self.templates = render, templates

    @classmethod
    def from_hf_dir(cls, hf_dir: Path) -> HFSide:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))

        def render(messages: list[dict], tools: list[dict] | None) -> list[int]:
            return list(tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True))

        return cls(render, hf_templates(tokenizer))

    @classmethod
    def from_gguf(cls, source_gguf: Path) -> HFSide:
        """A GGUF source: its template rendered by transformers' renderer with its BOS/EOS strings (what
        ``apply_chat_template`` passes), tokenized by the source GGUF's own llama.cpp tokenizer with no
        BOS added (``apply_chat_template`` tokenizes without adding special tokens)."""
        header = read_gguf_header(source_gguf)
        templates = gguf_templates(header.metadata)

        @functools.cache
        def tokenizer() -> tuple[Any, dict[str, str | None]]:
            """The source's llama.cpp vocabulary and special-token strings, read when first rendering (a
            source without a template needs neither: a 262k-token vocabulary takes seconds to load)."""
            tokens = header.strings("tokenizer.ggml.tokens")
            ids = {kwarg: header.metadata.get(f"tokenizer.ggml.{name}_token_id") for kwarg, name in
                   (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding"))}
            return load_llama_vocab(source_gguf), {k: None if i is None else tokens[i] for k, i in ids.items()}

        def render(messages: list[dict], tools: list[dict] | None) -> list[int]:
            from transformers.utils.chat_template_utils import render_jinja_template

            vocab, specials = tokenizer()
            rendered, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=templates["default"],
                                                add_generation_prompt=True, **specials)
            return vocab.tokenize(rendered[0].encode("utf-8"), add_bos=False, special=True)

        return cls(render, templates)


def compare_conversations(server: LlamaServer, vocab, hf: HFSide, template: str) -> tuple[list[dict], list[str]]:
    """Each fixed conversation through both engines: per conversation its token count and whether the
    ids agree; the reasons of those that do not (or that one engine cannot render)."""
    pieces = token_pieces(vocab)
    rows, reasons = [], []
    for name, messages, tools in conversations(template):
        row: dict[str, Any] = {"conversation": name, "tools": bool(tools)}
        try:
            ref = hf.render(messages, tools)
        except Exception as err:  # a template transformers' Jinja cannot render: a finding, not a crash
            row["error"] = f"transformers could not render it: {type(err).__name__}: {err}"
        else:
            try:
                got = llama_cpp_ids(vocab, server.apply_template(messages, tools))
            except UserError as err:
                row["error"] = str(err)
            else:
                pos = first_difference(ref, got)
                row.update(tokens=len(ref), identical=pos is None)
                if pos is not None:
                    row["first_difference"] = pos
                    reasons.append(f"conversation {name!r}: "
                                   + difference_at(ref, got, pos, pieces, ("transformers", "llama.cpp")))
        if "error" in row:
            reasons.append(f"conversation {name!r}: {row['error']}")
        rows.append(row)
    return rows, reasons


def end_of_turn_token(server: LlamaServer, vocab) -> int | None:
    """The token the template closes an assistant turn with: the first token after the reply's text
    in a rendered two-turn chat (ChatML's <|im_end|>, Llama 3's <|eot_id|>, Gemma's <end_of_turn>)."""
    ids = llama_cpp_ids(vocab, server.apply_template(END_OF_TURN_PROBE, None))
    reply = vocab.tokenize(END_OF_TURN_PROBE[1]["content"].encode("utf-8"), add_bos=False, special=False)
    for start in range(len(ids) - len(reply), -1, -1):
        if ids[start:start + len(reply)] == reply:
            after = start + len(reply)
            return ids[after] if after < len(ids) else None
    return None


def chat_generation(gguf: Path, prompt_ids: list[int], max_tokens: int, threads: int,
                    gpu_layers: int = 0) -> dict[str, Any]:
    """A greedy answer to the rendered prompt, with ``gpu_layers`` layers on the GPU: its tokens and
    text, and the end-of-generation token it stopped at (None when the budget ran out first)."""
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=len(prompt_ids) + max_tokens + 8, n_threads=threads,
                n_gpu_layers=gpu_layers, seed=0, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    tokens, stop = [], None
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, reset=True):
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            stop = token
            break
        if len(tokens) >= max_tokens:
            break
        tokens.append(token)
    return {"tokens": len(tokens), "text": llm.detokenize(tokens).decode("utf-8", errors="replace"), "stop_token": stop}


def sanity_turn(server: LlamaServer, vocab, gguf: Path, max_tokens: int, threads: int,
                gpu_layers: int = 0) -> tuple[dict, list[str]]:
    """The instruct sanity generation: it must end its turn with the template's end-of-turn token."""
    pieces = token_pieces(vocab)
    eot = end_of_turn_token(server, vocab)
    prompt_ids = llama_cpp_ids(vocab, server.apply_template(SANITY_TURN, None))
    result = chat_generation(gguf, prompt_ids, max_tokens, threads, gpu_layers)
    result.update(prompt=SANITY_TURN[-1]["content"], max_tokens=max_tokens, end_of_turn_token=eot,
                  end_of_turn_piece=pieces([eot])[0] if eot is not None else None)
    stop = result["stop_token"]
    reasons = []
    if eot is None:
        reasons.append("sanity turn: no end-of-turn token follows an assistant reply in the rendered template")
    elif stop is None:
        reasons.append(f"sanity turn: no end of turn within {max_tokens} tokens (expected {pieces([eot])[0]!r}); "
                       f"the answer began {result['text'][:80]!r}")
    elif stop != eot:
        reasons.append(f"sanity turn: ended with {pieces([stop])[0]!r} ({stop}) but the template ends a turn with "
                       f"{pieces([eot])[0]!r} ({eot})")
    result["passed"] = not reasons
    return result, reasons


def check(stamp: Path, gguf: Path, hf: HFSide, max_tokens: int | None, threads: int, log: Path,
          gpu_layers: int = 0) -> dict[str, Any]:
    """The chat-template record of a reference GGUF against its source (see the module docstring);
    the sanity turn is run with a budget of ``max_tokens`` (None: not run), on the GPU with
    ``gpu_layers`` (llama-server only renders and tokenizes: it stays on the CPU). ``log``: llama-server's."""
    if not hf.templates:
        return {"verdict": "not applicable", "reasons": [], "why": "the source has no chat template"}
    in_gguf = gguf_templates(read_gguf_header(gguf).metadata)
    reasons = template_differences(hf.templates, in_gguf)
    record: dict[str, Any] = {"source_templates": sorted(hf.templates), "templates_equal": not reasons}
    if "default" not in in_gguf:  # nothing of the model's own to render
        return {**record, "verdict": "failed", "reasons": reasons}
    template = hf.templates["default"]
    vocab = load_llama_vocab(gguf)
    try:
        with llama_server(stamp, gguf, threads, log) as server:
            rows, mismatches = compare_conversations(server, vocab, hf, template)
            reasons += mismatches
            record["conversations"] = rows
            if max_tokens is not None:
                sanity, problems = sanity_turn(server, vocab, gguf, max_tokens, threads, gpu_layers)
                reasons += problems
                record["sanity_turn"] = sanity
    except UserError as err:  # the server would not load the template: a finding about the model
        reasons.append(f"llama.cpp's template engine: {err}")
    return {**record, "engine": "llama-server /apply-template (--jinja)",
            "verdict": "failed" if reasons else "passed", "reasons": reasons}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, required=True, help="the converted reference GGUF")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--hf-dir", type=Path, help="an HF-format source directory")
    group.add_argument("--reference-gguf", type=Path, help="a GGUF source")
    parser.add_argument("--stamp", type=Path, required=True)
    parser.add_argument("--sanity-max-tokens", type=int, help="token budget of the sanity turn (without it: no sanity turn)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpu-layers", type=int, default=0, help="layers the sanity turn offloads to the GPU")
    parser.add_argument("--verify", type=Path, action="append", default=[], help="check this file against its .sha256 first")
    parser.add_argument("--server-log", type=Path, required=True, help="llama-server's log")
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    for path in ns.verify:
        verify(path)
    os.environ["LLAMA_CPP_LIB_PATH"] = json.loads(ns.stamp.read_text())["bin_dir"]
    started = time.monotonic()
    hf = HFSide.from_hf_dir(ns.hf_dir) if ns.hf_dir else HFSide.from_gguf(ns.reference_gguf)
    record = check(ns.stamp, ns.gguf, hf, ns.sanity_max_tokens, ns.threads, ns.server_log, ns.gpu_layers)
    record["seconds"] = round(time.monotonic() - started, 1)
    atomic_write_text(ns.out, json.dumps(record, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
    print(f"{ns.gguf}: chat template {record['verdict']}" + "".join(f"\n  {r}" for r in record["reasons"]))


def verdict_line(record: dict[str, Any]) -> str:
    """One line for reports: the verdict and, when failed, the first reason."""
    return record["verdict"] + (f": {record['reasons'][0]}" if record["reasons"] else "")


if __name__ == "__main__":
    run_cli(main)

