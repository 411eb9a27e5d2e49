"""fal's JSON Schemas turned into pydantic models at run time, with ``pydantic.create_model``.

Why at run time and not with a code generator (datamodel-code-generator and the like): a generator emits
source to commit, so every fal schema change (fal adds effect scenes, voices and fields every month)
would be a code change and a release, and an endpoint id met for the first time (``uses:`` any fal
endpoint) would have no model at all. Built here from the vendored or refreshed schema, the model is
always the schema klingflow says it used (its sha256 is in the ledger). Models are built lazily, per
endpoint, and cached per process by the registry, so a pipeline pays only for the endpoints it uses
(about a millisecond each).

What is converted: ``type`` (string, integer, number, boolean, array, object), ``pattern``, OpenAPI's
``nullable`` and single-schema ``allOf``, ``enum`` and ``const``
(as :class:`~klingflow.endpoints._enums.FalEnum`: did-you-mean errors, growing enums), ``anyOf`` with
``null`` (optional) and of several types (a union), ``default``, ``required``, ``minimum``/``maximum``
and their exclusive forms, ``minLength``/``maxLength``, ``minItems``/``maxItems``, ``$ref`` into
``$defs`` (nested models, built once each), and objects without properties (free-form dicts). Input
models refuse unknown fields (fal drops a misspelt field without a word and bills the run anyway);
output models keep them (fal adds output fields without notice). A property whose name is not a valid
Python attribute keeps fal's name on the wire through an alias.
"""

from __future__ import annotations

import keyword
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from klingflow.endpoints._enums import FalEnum
from klingflow.endpoints._overlays import NEWER_ENUM_VALUES

__all__ = ["FalInput", "FalOutput", "model_from_schema", "resolve"]


class FalInput(BaseModel):
    """Base of every input model: unknown fields are refused, naming the field."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        serialize_by_alias=True,
        validate_default=True,
        regex_engine="python-re",  # fal's patterns are Python's (its servers are pydantic)
    )


class FalOutput(BaseModel):
    """Base of every output model: unknown fields are kept, so a new fal field never breaks a run."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)


def resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """``node`` with a ``$ref`` into ``$defs`` (or a single ``allOf``) followed (one level)."""
    if isinstance(node.get("allOf"), list) and len(node["allOf"]) == 1:
        node = node["allOf"][0]
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return dict(defs.get(ref.removeprefix("#/$defs/"), {}))
    return node


def _python_name(name: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    if (
        not safe.isidentifier()
        or keyword.iskeyword(safe)
        or safe.startswith(("model_", "_"))
        or hasattr(BaseModel, safe)
    ):
        safe = f"field_{safe.lstrip('_')}"
    return safe


class _Builder:
    """Builds the models of one schema; nested ``$defs`` models are shared within it."""

    def __init__(self, prefix: str, defs: dict[str, Any], output: bool) -> None:
        self.prefix = prefix
        self.defs = defs
        self.base: type[BaseModel] = FalOutput if output else FalInput
        self.built: dict[str, type[BaseModel]] = {}

    def object_model(self, name: str, schema: dict[str, Any], *, top: bool = False) -> type[BaseModel]:
        required = set(schema.get("required", []))
        properties: dict[str, Any] = schema.get("properties", {})
        order = [p for p in schema.get("x-fal-order-properties", []) if p in properties]
        order += [p for p in properties if p not in order]
        fields: dict[str, Any] = {}
        for prop in order:
            annotation, nullable = self.annotation(prop, properties[prop])
            node = properties[prop]
            python_name = _python_name(prop)
            kwargs: dict[str, Any] = {} if python_name == prop else {"alias": prop}
            if "default" in node:
                fields[python_name] = (
                    annotation | None if nullable else annotation,
                    Field(node["default"], **kwargs),
                )
            elif prop in required:
                fields[python_name] = (annotation | None if nullable else annotation, Field(**kwargs))
            else:
                fields[python_name] = (annotation | None, Field(None, **kwargs))
        return create_model(f"{self.prefix}{name}" if top else name, __base__=self.base, **fields)

    def ref_model(self, ref: str) -> type[BaseModel]:
        name = ref.removeprefix("#/$defs/")
        if name not in self.built:
            self.built[name] = self.object_model(name, self.defs.get(name, {"type": "object"}))
        return self.built[name]

    def annotation(self, field: str, node: dict[str, Any]) -> tuple[Any, bool]:
        """The type of one property and whether ``null`` is allowed."""
        if isinstance(node.get("allOf"), list) and len(node["allOf"]) == 1:
            # OpenAPI's way to give a $ref a default or nullable: the one schema, with the siblings
            merged = {key: value for key, value in node.items() if key != "allOf"}
            return self.annotation(field, {**node["allOf"][0], **merged})
        if node.get("nullable") is True:  # OpenAPI 3.0's null
            return self.annotation(field, {key: value for key, value in node.items() if key != "nullable"})[
                0
            ], True
        if "anyOf" in node or "oneOf" in node:
            options = node.get("anyOf") or node.get("oneOf") or []
            nullable = any(option.get("type") == "null" for option in options)
            kinds = [self.annotation(field, option)[0] for option in options if option.get("type") != "null"]
            if not kinds:
                return Any, True
            return (kinds[0] if len(kinds) == 1 else Union[tuple(kinds)]), nullable  # noqa: UP007
        if "$ref" in node:
            return self.ref_model(node["$ref"]), False
        if "const" in node:
            return self._enum(field, [node["const"]]), False
        if "enum" in node:
            return self._enum(field, node["enum"]), False
        kind = node.get("type")
        if isinstance(kind, list):
            nullable = "null" in kind
            kinds = [k for k in kind if k != "null"]
            return self.annotation(field, {**node, "type": kinds[0] if kinds else "string"})[0], nullable
        if kind == "string":
            text = self._constrained(str, node, min_length="minLength", max_length="maxLength")
            if isinstance(node.get("pattern"), str):
                text = Annotated[text, Field(pattern=node["pattern"])]
            return text, False
        if kind == "integer":
            return self._number(int, node), False
        if kind == "number":
            return self._number(float, node), False
        if kind == "boolean":
            return bool, False
        if kind == "array":
            item: Any = self.annotation(field, node.get("items", {}))[0] if node.get("items") else Any
            listed: Any = list[item]
            return self._constrained(listed, node, min_length="minItems", max_length="maxItems"), False
        if kind == "object" or "properties" in node:
            if node.get("properties"):
                return self.object_model(_python_name(field).title().replace("_", ""), node), False
            return dict[str, Any], False
        return Any, False

    @staticmethod
    def _enum(field: str, values: list[Any]) -> Any:
        if all(isinstance(value, str) for value in values):
            accept_int = all(value.isdigit() for value in values)
            newer = NEWER_ENUM_VALUES.get(field, ())
            # a newer list that holds every value of the schema's is the better order (fal's, later)
            known = newer if set(values) <= set(newer) else (*values, *(v for v in newer if v not in values))
            return Annotated[str, FalEnum(field, known, accept_int=accept_int)]
        from typing import Literal

        return Literal[tuple(values)]

    @staticmethod
    def _constrained(base: Any, node: dict[str, Any], *, min_length: str, max_length: str) -> Any:
        limits = {}
        if min_length in node:
            limits["min_length"] = node[min_length]
        if max_length in node:
            limits["max_length"] = node[max_length]
        return Annotated[base, Field(**limits)] if limits else base

    @staticmethod
    def _number(base: type, node: dict[str, Any]) -> Any:
        limits = {
            name: node[key]
            for key, name in (
                ("minimum", "ge"),
                ("maximum", "le"),
                ("exclusiveMinimum", "gt"),
                ("exclusiveMaximum", "lt"),
            )
            if isinstance(node.get(key), int | float) and not isinstance(node.get(key), bool)
        }
        return Annotated[base, Field(**limits)] if limits else base


def model_from_schema(name: str, schema: dict[str, Any], *, output: bool = False) -> type[BaseModel]:
    """The pydantic model of one fal input (``output=False``) or output JSON Schema.

    ``name`` prefixes the top-level class (``KlingVideoV26ProImageToVideoInput``), so error messages say
    which endpoint they are of; nested models keep fal's ``$defs`` names (``KlingV3MultiPromptElement``).
    """
    builder = _Builder(name, schema.get("$defs", {}), output)
    return builder.object_model("Output" if output else "Input", schema, top=True)
