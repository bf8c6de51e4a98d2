"""Materials and unit conversion: the built-in and organizations' own materials, and the units endpoint."""

from __future__ import annotations

from handlers.base import DETAIL, APIHandler, authenticated
from models.errors import ValidationFailed
from models.materials import MaterialIn
from models.units import convert


class ConvertUnitsHandler(APIHandler):
    """GET ?value=&from_unit=&to_unit=: a length, area, volume or mass in another unit."""

    query_params = DETAIL | {"value", "from_unit", "to_unit"}

    @authenticated
    async def get(self) -> None:
        raw = self.get_query_argument("value", "")
        try:
            value = float(raw)
        except ValueError:
            raise ValidationFailed("value must be a number.", field_errors={"value": ["Must be a number."]}) from None
        self.write_json(
            convert(value, self.get_query_argument("from_unit", ""), self.get_query_argument("to_unit", ""))
        )


class MaterialsHandler(APIHandler):
    """GET: built-in materials and the caller's organizations' own; POST: add one (ADMIN/OWNER)."""

    @authenticated
    async def get(self) -> None:
        results = await self.services.materials.list_visible(self.require_principal())
        self.write_json({"count": len(results), "results": results})

    @authenticated
    async def post(self) -> None:
        body = self.parse_body(MaterialIn)
        self.write_json(await self.services.materials.add(self.require_principal(), body, self.actor), status=201)


routes = [
    (r"/api/designs/convert-units/", ConvertUnitsHandler),
    (r"/api/materials/", MaterialsHandler),
]
