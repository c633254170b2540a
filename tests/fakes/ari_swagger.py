"""Asterisk's ARI Swagger 1.1 description, loaded from its JSON files: request validation and model checks."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The 22.10.1 copies of Asterisk's rest-api/api-docs/*.json, beside the checkout (see pbx.md).
DEFAULT_DOCS = Path(__file__).resolve().parents[3] / "shared" / "asterisk" / "ari-api-docs"
_SEGMENT = re.compile(r"\{(\w+)\}")
_INT = re.compile(r"-?\d+")


def docs_dir() -> Path:
    return Path(os.environ.get("ARI_API_DOCS", DEFAULT_DOCS))


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # query | path | body
    required: bool
    data_type: str
    multiple: bool
    allowed: dict[str, Any] | None


@dataclass
class Operation:
    method: str
    path: str  # swagger template, e.g. /channels/{channelId}/variable
    nickname: str
    response_class: str
    params: dict[str, Param]
    regex: re.Pattern[str] = field(init=False)
    templated: int = field(init=False)

    def __post_init__(self) -> None:
        self.regex = re.compile("^" + _SEGMENT.sub(r"(?P<\1>[^/]+)", self.path) + "$")
        self.templated = len(_SEGMENT.findall(self.path))


class Swagger:
    """Every operation and model of the ARI description. Raises FileNotFoundError when the files are absent."""

    def __init__(
        self, directory: Path | None = None, code_allows: dict[tuple[str, str], tuple[str, ...]] | None = None
    ) -> None:
        """`code_allows` widens a parameter's allowed values where Asterisk's code accepts more than its docs."""
        directory = directory or docs_dir()
        code_allows = code_allows or {}
        self.operations: list[Operation] = []
        self.models: dict[str, dict[str, Any]] = {}
        for path in sorted(directory.glob("*.json")):
            doc = json.loads(path.read_text())
            if "apis" not in doc or path.name == "resources.json":
                continue
            self.models.update(doc.get("models", {}))
            for api in doc["apis"]:
                for op in api["operations"]:
                    params = {
                        p["name"]: Param(p["name"], p["paramType"], bool(p.get("required")), p["dataType"],
                                         bool(p.get("allowMultiple")), p.get("allowableValues"))
                        for p in op.get("parameters", [])
                    }
                    for (nickname, name), values in code_allows.items():
                        if nickname == op["nickname"] and name in params:
                            allowed = {"valueType": "LIST", "values": list(values)}
                            params[name] = dataclasses.replace(params[name], allowed=allowed)
                    self.operations.append(
                        Operation(op["httpMethod"], api["path"], op["nickname"], op.get("responseClass", ""), params)
                    )
        if not self.operations:
            raise FileNotFoundError(f"no ARI api-docs in {directory}")
        # Asterisk's path tree tries literal segments before {wildcards}: /channels/externalMedia is not an id.
        self.operations.sort(key=lambda o: o.templated)

    def match(self, method: str, path: str) -> tuple[Operation | None, dict[str, str], bool]:
        """(operation, path params, path_known): path_known without operation means 405."""
        known = False
        for op in self.operations:
            m = op.regex.match(path)
            if m is None:
                continue
            known = True
            if op.method == method:
                return op, m.groupdict(), True
        return None, {}, known

    # ---- requests ------------------------------------------------------------------------------------------

    def check_params(self, op: Operation, query: dict[str, str], body: dict[str, Any] | None) -> str | None:
        """The first thing the description does not allow in this request, or None."""
        allowed = {name for name, p in op.params.items() if p.kind != "path"} | {"api_key"}
        for name in query:
            if name not in allowed:
                return f"unknown parameter {name!r} for {op.nickname}"
        for name in body or {}:
            if name not in allowed:
                return f"unknown body field {name!r} for {op.nickname}"
        for p in op.params.values():
            if p.kind == "path":
                continue
            present = name_in(p, query, body)
            if p.required and not present:
                return f"missing required parameter {p.name!r}"
            if present and p.kind == "query":
                problem = check_value(p, query[p.name] if p.name in query else str(body[p.name]))  # type: ignore[index]
                if problem:
                    return problem
        return None

    # ---- models --------------------------------------------------------------------------------------------

    def check_model(self, model: str, value: Any, where: str = "") -> None:
        """Assert `value` is a valid instance of `model` (required fields, types, allowed values)."""
        where = where or model
        if model.startswith("List[") and model.endswith("]"):
            assert isinstance(value, list), f"{where}: expected a list"
            for i, item in enumerate(value):
                self.check_model(model[5:-1], item, f"{where}[{i}]")
            return
        simple = {"string": str, "int": int, "long": int, "boolean": bool, "double": (int, float),
                  "Date": str, "object": dict}
        if model in simple:
            assert isinstance(value, simple[model]), f"{where}: expected {model}, got {value!r}"
            return
        assert model in self.models, f"{where}: unknown model {model}"
        assert isinstance(value, dict), f"{where}: expected an object"
        for name, prop in self.properties(model).items():
            if name not in value:
                assert not prop.get("required"), f"{where}: required field {name!r} missing"
                continue
            self.check_model(prop["type"], value[name], f"{where}.{name}")
            allowed = prop.get("allowableValues")
            if allowed and allowed.get("valueType") == "LIST":
                assert value[name] in allowed["values"], f"{where}.{name}: {value[name]!r} not allowed"

    def properties(self, model: str) -> dict[str, Any]:
        """The model's properties plus those of the models it is a subtype of (Event, Message)."""
        props = dict(self.models[model]["properties"])
        for parent, spec in self.models.items():
            if model in spec.get("subTypes", []):
                props.update(self.properties(parent))
        return props

    def check_event(self, event: dict[str, Any]) -> None:
        self.check_model(event["type"], event, event["type"])


def name_in(p: Param, query: dict[str, str], body: dict[str, Any] | None) -> bool:
    return p.name in query or (body is not None and p.name in body)


def check_value(p: Param, raw: str) -> str | None:
    values = raw.split(",") if p.multiple else [raw]
    for v in values:
        if p.data_type in ("int", "long") and not _INT.fullmatch(v):
            return f"{p.name}: {v!r} is not an integer"
        if p.data_type == "boolean" and v not in ("true", "false"):
            return f"{p.name}: {v!r} is not a boolean"
        allowed = p.allowed or {}
        if allowed.get("valueType") == "LIST" and v not in allowed["values"]:
            return f"{p.name}: {v!r} is not one of {allowed['values']}"
        if allowed.get("valueType") == "RANGE" and "min" in allowed and int(v) < allowed["min"]:
            return f"{p.name}: {v!r} below {allowed['min']}"
    return None
