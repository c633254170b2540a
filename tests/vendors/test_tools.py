"""The neutral built-in tools: declarations, argument parsing, mapping to our events, DTMF text."""

from __future__ import annotations

from bridge.config import AgentPrompt
from bridge.vendors import tools
from bridge.vendors.base import HangupRequest, TransferRequest


class TestDeclaredTools:
    def test_builtins_by_default(self):
        specs = tools.declared_tools(AgentPrompt())
        assert [t.name for t in specs] == ["end_call", "transfer_call"]
        for spec in specs:
            assert spec.parameters["type"] == "object" and spec.description

    def test_prompt_tools_are_added_and_may_replace_a_builtin(self):
        prompt = AgentPrompt(tools=(
            {"name": "end_call", "description": "Hang up politely."},
            {"name": "lookup_order", "description": "Find an order.",
             "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}},
            {"description": "no name: ignored"},
        ))
        specs = {t.name: t for t in tools.declared_tools(prompt)}
        assert list(specs) == ["transfer_call", "end_call", "lookup_order"]
        assert specs["end_call"].description == "Hang up politely."
        assert specs["end_call"].parameters == {"type": "object", "properties": {}}
        assert specs["lookup_order"].parameters["required"] == ["id"]


class TestToolEvent:
    def test_end_call(self):
        assert tools.tool_event("end_call", '{"reason": "caller is done"}') == HangupRequest("caller is done")
        assert tools.tool_event("end_call", "") == HangupRequest()
        assert tools.tool_event("end_call", None) == HangupRequest()

    def test_transfer_call_string_or_object_arguments(self):
        assert tools.tool_event("transfer_call", '{"destination": "sales"}') == TransferRequest("sales")
        assert tools.tool_event("transfer_call", {"target": "+4930123"}) == TransferRequest("+4930123")
        assert tools.tool_event("transfer_call", "{}") == TransferRequest("")

    def test_other_tools_are_not_ours(self):
        assert tools.tool_event("lookup_order", '{"id": "1"}') is None

    def test_answer_counts_builtin_declared_and_made_up_tools_apart(self):
        prompt = AgentPrompt(tools=({"name": "lookup_order", "description": "Find an order."},))
        record, result, event = tools.answer("end_call", '{"reason": "bye"}', prompt)
        assert (record.outcome, result, event) == ("ok", tools.OK, HangupRequest("bye"))
        record, result, event = tools.answer("lookup_order", '{"id": "1"}', prompt)
        assert (record.name, record.arguments, record.outcome) == ("lookup_order", {"id": "1"}, "unavailable")
        assert (result, event) == (tools.UNAVAILABLE, None)
        record, result, event = tools.answer("lookup_order", "{}", AgentPrompt())
        assert (record.outcome, result, event) == ("unknown", tools.UNAVAILABLE, None)

    def test_garbage_arguments_are_empty(self):
        assert tools.parse_arguments("not json") == {}
        assert tools.parse_arguments("[1, 2]") == {}
        assert tools.parse_arguments('{"a": 1}') == {"a": 1}


def test_dtmf_text():
    assert tools.dtmf_text("5") == "caller pressed 5"
    assert tools.dtmf_text("#") == "caller pressed #"
