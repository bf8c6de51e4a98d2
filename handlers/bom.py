"""BOM endpoints: assembly nodes (list, detail, manual corrections) and a design's nested tree with totals."""

from __future__ import annotations

from handlers.base import UUID, APIHandler, authenticated
from models.bom import BOM_LIST, BomNodeIn, BomNodePatch, BomNodes, render_node
from models.listing import parse_list_query, run_list


class BomBase(APIHandler):
    @property
    def bom(self) -> BomNodes:
        return self.services.bom


class BomNodesHandler(BomBase):
    @authenticated
    async def get(self) -> None:
        principal = self.require_principal()
        query = parse_list_query(BOM_LIST, self.request.query_arguments)
        self.write_json(
            await run_list(
                self.db.bom_nodes,
                self.bom.visible_filter(principal),
                query,
                self.bom.render_many,
                self.absolute_url(self.request.path),
                self.request.query_arguments,
            )
        )

    @authenticated
    async def post(self) -> None:
        doc = await self.bom.create(self.require_principal(), self.parse_body(BomNodeIn), self.actor)
        self.write_json((await self.bom.render_many([doc]))[0], status=201)


class BomNodeHandler(BomBase):
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
    @authenticated
    async def get(self, design_id: str) -> None:
        self.write_json(await self.bom.tree(self.require_principal(), design_id))


routes = [
    (r"/api/bom-nodes/", BomNodesHandler),
    (r"/api/bom-nodes/([0-9]{1,15})/", BomNodeHandler),
    (rf"/api/designs/{UUID}/bom/", DesignBomHandler),
]
