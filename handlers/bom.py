"""BOM endpoints: assembly nodes (list, detail, manual corrections) and a design's nested tree with totals."""

from __future__ import annotations

from handlers.base import LIST, UUID, APIHandler, authenticated
from models.bom import BomNodeIn, BomNodePatch, BomNodes, render_node


class BomBase(APIHandler):
    """The BOM repository."""

    @property
    def bom(self) -> BomNodes:
        return self.services.bom


class BomNodesHandler(BomBase):
    """GET: the BOM nodes the caller may see; POST: a manual correction (a node added under a parent)."""

    query_params = LIST

    @authenticated
    async def get(self) -> None:
        page = await self.bom.list_visible(
            self.require_principal(), self.request.query_arguments, self.absolute_url(self.request.path)
        )
        self.write_json(page)

    @authenticated
    async def post(self) -> None:
        doc = await self.bom.create(self.require_principal(), self.parse_body(BomNodeIn), self.actor)
        self.write_json((await self.bom.render_many([doc]))[0], status=201)


class BomNodeHandler(BomBase):
    """One node: read, correct (PATCH), delete with everything below it."""

    @authenticated
    async def get(self, node_id: str) -> None:
        node, design = await self.bom.get_visible(self.require_principal(), int(node_id))
        self.write_json(render_node(node, design.get("density_kg_m3")))

    @authenticated
    async def patch(self, node_id: str) -> None:
        body = self.parse_body(BomNodePatch)
        node, design = await self.bom.update(self.require_principal(), int(node_id), body, self.actor)
        self.write_json(render_node(node, design.get("density_kg_m3")))

    @authenticated
    async def delete(self, node_id: str) -> None:
        await self.bom.delete(self.require_principal(), int(node_id), self.actor)
        self.no_content()


class DesignBomHandler(BomBase):
    """GET: a design's BOM as a nested tree with part, volume and mass totals."""

    @authenticated
    async def get(self, design_id: str) -> None:
        self.write_json(await self.bom.tree(self.require_principal(), design_id))


routes = [
    (r"/api/bom-nodes/", BomNodesHandler),
    (r"/api/bom-nodes/([0-9]{1,15})/", BomNodeHandler),
    (rf"/api/designs/{UUID}/bom/", DesignBomHandler),
]
