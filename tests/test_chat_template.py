"""Chat-template check: a tiny Llama with a real chat template, the same GGUF with its template
broken by gguf-py's metadata editor, a template llama.cpp's Jinja engine cannot run, and sources
without a template."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workflow_run import CALIBRATION as CAL
from workflow_scripts.chat_template import conversations, template_differences

# A Llama-2-style template with a system block, assistant turns closed by EOS, and tool calls.
TEMPLATE = (
    "{{ bos_token }}{% if tools %}[TOOLS] {{ tools | tojson }} [/TOOLS]{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<<SYS>> {{ message['content'] }} <</SYS>>\n"
    "{% elif message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% elif message['role'] == 'assistant' %}"
    "{% if message.tool_calls is defined and message.tool_calls %}{% for call in message.tool_calls %}"
    "[CALL] {{ call.function.name }} {{ call.function.arguments | tojson }} [/CALL]{% endfor %}"
    "{% else %} {{ message['content'] }}{% endif %}{{ eos_token }}"
    "{% elif message['role'] == 'tool' %}[RESULT] {{ message['content'] }} [/RESULT]{% endif %}"
    "{% endfor %}{% if add_generation_prompt %} {% endif %}"
)
SYSTEM_BLOCK = "<<SYS>> {{ message['content'] }} <</SYS>>\n"
# Broken: the system message is dropped. Unrenderable by llama.cpp: a filter its engine lacks.
BROKEN = TEMPLATE.replace(SYSTEM_BLOCK, "")
UNSUPPORTED = TEMPLATE.replace("[INST] {{ message['content'] }}", "[INST] {{ message['content'] | wordwrap(60) }}")


def test_template_differences_name_what_differs():
    assert template_differences({"default": "abc"}, {"default": "abc"}) == []
    assert template_differences({"default": "{{ x }}abcdef"}, {"default": "{{ x }}abXdef"}) == [
        "tokenizer.chat_template differs from the source's at character 9: source '{{ x }}abcdef', GGUF '{{ x }}abXdef'"]
    assert template_differences({"default": "abcd", "tool_use": "t"}, {"default": "abcd"}) == [
        "tokenizer.chat_template.tool_use is missing from the GGUF (the source has a 1-character template)"]
    assert template_differences({"default": "a"}, {"default": "a", "rag": "r"}) == [
        "tokenizer.chat_template.rag is in the GGUF but not in the source"]


def test_the_tool_call_is_rendered_only_for_templates_that_mention_tools():
    assert [name for name, _, _ in conversations("{{ messages }}")] == ["system and user", "several turns", "user alone"]
    with_tools = conversations("{% if tools %}{{ tools }}{% endif %}")
    assert with_tools[-1][0] == "tool call" and with_tools[-1][2][0]["function"]["name"] == "get_weather"


@pytest.fixture
def lib(toolchain_bin, monkeypatch):
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(toolchain_bin))


@pytest.fixture(scope="module")
def chat_hf(tmp_path_factory) -> Path:
    """The tiny Llama with TEMPLATE in its tokenizer_config.json, as HF checkpoints ship it."""
    from tests.tiny_model import make_tiny_llama

    dest = make_tiny_llama(tmp_path_factory.mktemp("chat") / "chat-llama", CAL.read_text())
    config_path = dest / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "chat_template": TEMPLATE}, indent=2))
    return dest


@pytest.fixture(scope="module")
def chat_f16(chat_hf, toolchain_stamp, tmp_path_factory) -> Path:
    from workflow_scripts.convert import convert_hf

    out = tmp_path_factory.mktemp("chat-f16") / "chat-F16.gguf"
    convert_hf(json.loads(toolchain_stamp.read_text())["convert_script"], chat_hf, "F16", out, out.with_suffix(".log"))
    return out


def with_template(gguf: Path, template: str, out: Path) -> Path:
    """A copy of ``gguf`` whose chat template gguf-py's metadata editor replaced."""
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(gguf), str(out), "--chat-template",
                    template, "--force"], check=True, capture_output=True)
    return out


def test_converted_chat_model_renders_like_transformers(lib, toolchain_stamp, chat_hf, chat_f16, tmp_path):
    """All four conversations (the template mentions tools) give transformers' ids; the random-weight
    model cannot end its turn with </s> (what closes an assistant turn here) within 16 tokens."""
    from workflow_scripts.chat_template import HFSide, check

    record = check(toolchain_stamp, chat_f16, HFSide.from_hf_dir(chat_hf), 16, 2, tmp_path / "server.log")
    assert record["templates_equal"] is True
    assert [(r["conversation"], r["identical"]) for r in record["conversations"]] == [
        ("system and user", True), ("several turns", True), ("user alone", True), ("tool call", True)]
    assert all(r["tokens"] > 30 for r in record["conversations"])
    turn = record["sanity_turn"]
    assert turn["end_of_turn_piece"] == "</s>" and turn["end_of_turn_token"] == 2
    assert turn["stop_token"] is None and turn["tokens"] == 16 and turn["passed"] is False
    assert record["verdict"] == "failed"
    assert record["reasons"] == [f"sanity turn: no end of turn within 16 tokens (expected '</s>'); the answer began "
                                 f"{turn['text'][:80]!r}"]
    # Without the sanity turn (a base model) the rendering alone passes.
    assert check(toolchain_stamp, chat_f16, HFSide.from_hf_dir(chat_hf), None, 2, tmp_path / "server.log")["verdict"] == "passed"


def test_a_gguf_source_is_rendered_by_transformers_and_tokenized_by_its_own_tokenizer(lib, toolchain_stamp, chat_f16, tmp_path):
    from workflow_scripts.chat_template import HFSide, check

    record = check(toolchain_stamp, chat_f16, HFSide.from_gguf(chat_f16), None, 2, tmp_path / "server.log")
    assert record["verdict"] == "passed" and len(record["conversations"]) == 4
    assert all(r["identical"] for r in record["conversations"])


def test_a_broken_gguf_template_fails_showing_the_first_differing_token(lib, toolchain_stamp, chat_hf, chat_f16, tmp_path):
    from workflow_scripts.chat_template import HFSide, check

    broken = with_template(chat_f16, BROKEN, tmp_path / "broken.gguf")
    record = check(toolchain_stamp, broken, HFSide.from_hf_dir(chat_hf), None, 2, tmp_path / "server.log")
    assert record["verdict"] == "failed" and record["templates_equal"] is False
    at = TEMPLATE.index(SYSTEM_BLOCK)
    assert record["reasons"][0].startswith(f"tokenizer.chat_template differs from the source's at character {at}: ")
    identical = {r["conversation"]: r["identical"] for r in record["conversations"]}
    # Only the conversations with a system message differ: BOS, the dummy-prefix space, then
    # transformers' "<<SYS>>" where llama.cpp (system dropped) has "[INST]".
    assert identical == {"system and user": False, "several turns": False, "user alone": True, "tool call": True}
    mismatch = record["reasons"][1]
    assert mismatch.startswith("conversation 'system and user': first difference at token 2 ")
    assert "transformers ids[0:6] = [1, " in mismatch and "['<s>', ' ', '<', '<', 'S', 'Y']" in mismatch
    assert "['<s>', ' ', '[', 'I', 'N', 'S']" in mismatch
    assert len(record["reasons"]) == 3


def test_a_gguf_without_the_sources_template_fails_as_missing(lib, toolchain_stamp, chat_hf, tiny_f16, tmp_path):
    from workflow_scripts.chat_template import HFSide, check

    record = check(toolchain_stamp, tiny_f16, HFSide.from_hf_dir(chat_hf), 16, 2, tmp_path / "server.log")
    assert record["verdict"] == "failed"
    assert record["reasons"] == [f"tokenizer.chat_template is missing from the GGUF (the source has a "
                                 f"{len(TEMPLATE)}-character template)"]
    assert not (tmp_path / "server.log").exists()  # nothing rendered


def test_a_source_without_a_template_is_not_applicable(lib, toolchain_stamp, tiny_hf, tiny_f16, tmp_path):
    from workflow_scripts.chat_template import HFSide, check

    for source in (HFSide.from_hf_dir(tiny_hf), HFSide.from_gguf(tiny_f16)):
        record = check(toolchain_stamp, tiny_f16, source, 16, 2, tmp_path / "server.log")
        assert record == {"verdict": "not applicable", "reasons": [], "why": "the source has no chat template"}


def test_a_template_llama_cpp_cannot_run_is_a_finding_not_a_crash(toolchain_stamp, chat_f16, tmp_path):
    """Through the CLI on a GGUF source: the record says why, the job succeeds (exit 0)."""
    gguf = with_template(chat_f16, UNSUPPORTED, tmp_path / "wordwrap.gguf")
    out = tmp_path / "chat_template.json"
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.chat_template", "--gguf", str(gguf),
                           "--reference-gguf", str(gguf), "--stamp", str(toolchain_stamp), "--sanity-max-tokens", "16",
                           "--server-log", str(tmp_path / "server.log"), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["verdict"] == "failed" and record["templates_equal"] is True and "conversations" not in record
    [reason] = record["reasons"]
    assert reason.startswith("llama.cpp's template engine: llama-server exited (1) before it was ready")
    assert "Unknown (built-in) filter 'wordwrap'" in reason
    assert "chat template failed" in proc.stdout


def test_the_card_states_the_check_as_recorded():
    from workflow_scripts.model_card import _chat_template_check

    passed = {"verdict": "passed", "reasons": [], "engine": "llama-server /apply-template (--jinja)",
              "conversations": [{}, {}, {}], "sanity_turn": {"end_of_turn_piece": "<|im_end|>", "tokens": 7}}
    line = _chat_template_check(passed)[0]
    assert line.startswith("Chat-template check passed") and "3 conversations" in line
    assert "ended it with `<|im_end|>` after 7 tokens" in line
    failed = {"verdict": "failed", "reasons": ["tokenizer.chat_template is missing from the GGUF"]}
    assert _chat_template_check(failed)[0] == ("**Chat-template check failed**: tokenizer.chat_template is missing "
                                               "from the GGUF.")
    assert _chat_template_check({"verdict": "not applicable", "reasons": []}) == []
    assert _chat_template_check(None) == []
