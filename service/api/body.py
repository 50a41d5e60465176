"""JSON request bodies, decoded once: straight from the bytes into their Struct, strictly.

Litestar's own body handling decodes the JSON to Python values and then converts them
with lax types (it shares that path with query parameters), so "24" would pass for 24.
A handler names its body's type twice instead, once for the decoder and once for its
``data`` (a mismatch stops the app at start-up)::

    @post("/", dto=StrictJSON[EventsIn])
    async def submit(self, data: JSONBody[EventsIn]) -> EventsOut: ...

Litestar then hands the raw body to :meth:`StrictJSON.decode_bytes` (the one decode)
and documents the Struct as the request body in OpenAPI. This DTO only decodes: it never
touches responses.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import msgspec
from litestar.dto import AbstractDTO, DTOFieldDefinition
from litestar.exceptions import ImproperlyConfiguredException
from litestar.typing import FieldDefinition

from service.api.errors import bad_input, schema_error

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.dto._backend import DTOBackend
    from litestar.openapi.spec import Reference, Schema

T = TypeVar("T")


class StrictJSON(AbstractDTO[T]):
    """Decode the body as ``T`` with strict types; a 400 names the first bad field."""

    __slots__ = ()
    decoder: ClassVar[msgspec.json.Decoder[Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        model_type = getattr(cls, "model_type", None)
        if model_type is not None:  # StrictJSON[SomeIn]: one decoder, built once
            cls.decoder = msgspec.json.Decoder(model_type, strict=True)

    def decode_bytes(self, value: bytes) -> Any:
        try:
            # an empty body reads as null, as Litestar's own request.json() has it
            return self.decoder.decode(value or b"null")
        except msgspec.ValidationError as exc:
            raise schema_error(exc) from None
        except msgspec.DecodeError as exc:
            raise bad_input("body", str(exc)) from None  # "JSON is malformed: ..."

    def decode_builtins(self, value: dict[str, Any]) -> Any:
        raise NotImplementedError("StrictJSON decodes JSON bodies only")

    @classmethod
    def create_for_field_definition(
        cls,
        field_definition: FieldDefinition,
        handler_id: str,
        backend_cls: type[DTOBackend] | None = None,
    ) -> None:
        """Called once per handler at start-up: check the handler's ``data`` is ``T``."""
        if field_definition.annotation is not cls.model_type:
            raise ImproperlyConfiguredException(
                f"{cls.__name__} decodes {cls.model_type!r}, but the handler's data is "
                f"{field_definition.annotation!r}"
            )

    @classmethod
    def create_openapi_schema(
        cls, field_definition: FieldDefinition, handler_id: str, schema_creator: SchemaCreator
    ) -> Reference | Schema:
        schema = schema_creator.for_field_definition(field_definition)
        # The decoder refuses fields a Struct does not declare (forbid_unknown_fields):
        # say so in the document, so clients and generated requests (schemathesis) know.
        for struct in _strict_structs(cls.model_type):
            component = FieldDefinition.from_annotation(struct)
            schema_creator.schema_registry.get_schema_for_field_definition(
                component
            ).additional_properties = False
        return schema

    @classmethod
    def is_supported_model_type_field(cls, field_definition: FieldDefinition) -> bool:
        return False  # never used for responses: handlers return Structs Litestar encodes

    @classmethod
    def generate_field_definitions(cls, model_type: type[Any]) -> Generator[DTOFieldDefinition, None, None]:
        raise NotImplementedError("StrictJSON builds no transfer model")

    @classmethod
    def detect_nested_field(cls, field_definition: FieldDefinition) -> bool:
        return False


def _strict_structs(type_: Any) -> list[type[msgspec.Struct]]:
    """The Structs reachable from ``type_`` (fields, lists, unions) that forbid unknown fields."""
    found: list[type[msgspec.Struct]] = []

    def walk(info: msgspec.inspect.Type) -> None:
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls in found:
                return
            if info.forbid_unknown_fields:
                found.append(info.cls)
            for f in info.fields:
                walk(f.type)
        elif isinstance(info, msgspec.inspect.Metadata):
            walk(info.type)
        elif isinstance(
            info, (msgspec.inspect.ListType, msgspec.inspect.SetType, msgspec.inspect.FrozenSetType)
        ):
            walk(info.item_type)
        elif isinstance(info, msgspec.inspect.DictType):
            walk(info.value_type)
        elif isinstance(info, msgspec.inspect.UnionType):
            for t in info.types:
                walk(t)

    walk(msgspec.inspect.type_info(type_))
    return found
