"""The OpenAPI document of a route that reads its JSON body itself (not through a FastAPI body
parameter, whose solving costs CPU on a hot route): its `requestBody`, and its model's schemas
among the document's components, both as FastAPI documents a body parameter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.models import Schema
from pydantic import BaseModel

REF_TEMPLATE = "#/components/schemas/{model}"


def json_body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """The `requestBody` (for a route's `openapi_extra`) of a required JSON body of `model`;
    `document_models` must add `model` to the components."""
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": REF_TEMPLATE.format(model=model.__name__)}}
        },
    }


def model_schemas(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """{name: JSON schema} of `model` and of every model it uses, as FastAPI puts a body
    model's in the components (validation mode, references into the components, no null
    values)."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode="validation")
    schemas: dict[str, dict[str, Any]] = {**schema.pop("$defs", {}), model.__name__: schema}
    return {
        name: jsonable_encoder(Schema.model_validate(definition), by_alias=True, exclude_none=True)
        for name, definition in schemas.items()
    }


def document_models(app: FastAPI, *models: type[BaseModel]) -> None:
    """Have `app`'s OpenAPI document (FastAPI's, generated once and cached) name `models` and
    the models they use in its components, where no route's FastAPI parameter puts them; a
    schema FastAPI already has is kept."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    extra: dict[str, dict[str, Any]] = {}
    for model in models:
        extra |= model_schemas(model)

    def openapi() -> dict[str, Any]:
        document = generate()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        if not extra.keys() <= schemas.keys():
            schemas |= {name: schema for name, schema in extra.items() if name not in schemas}
            document["components"]["schemas"] = dict(sorted(schemas.items()))
        return document

    app.openapi = openapi  # type: ignore[method-assign]
