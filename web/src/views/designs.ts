// The organization's designs: status, classification, filters, live updates, and the upload dialog.
import { all, ApiError, get, type Design, type Page, query } from "../api";
import type { App, View } from "../app";
import { badge } from "../classification";
import { debounce, h, replace } from "../dom";
import { bytes, when } from "../format";
import { openUpload } from "./upload";

const STATUSES = ["UPLOADING", "PROCESSING", "READY", "FAILED", "IN_REVIEW", "APPROVED", "REJECTED", "ARCHIVED"];
const CLASSIFICATIONS = ["UNCLASSIFIED", "CONFIDENTIAL", "SECRET", "TOP_SECRET", "ITAR"];

export function statusPill(status: string): HTMLElement {
  return h("span", { class: `status st-${status.toLowerCase()}`, "data-status": status }, status.replace("_", " "));
}

export function designsView(app: App): View {
  const search = h("input", { type: "search", id: "design-search", placeholder: "Part number, file or material" });
  const status = h(
    "select",
    { id: "filter-status" },
    h("option", { value: "" }, "All statuses"),
    STATUSES.map((s) => h("option", { value: s }, s.replace("_", " ").toLowerCase())),
  );
  const classification = h(
    "select",
    { id: "filter-classification" },
    h("option", { value: "" }, "All classifications"),
    CLASSIFICATIONS.map((c) => h("option", { value: c }, c.replace("_", " "))),
  );
  const body = h("tbody");
  const count = h("p", { class: "muted count", role: "status", "aria-live": "polite" });
  const uploadButton = h("button", { type: "button", class: "btn primary", id: "upload-open" }, "Upload design");
  const page = h(
    "section",
    { class: "page", "aria-labelledby": "designs-title" },
    h("div", { class: "page-head" }, h("h1", { id: "designs-title" }, "Designs"), h("div", { class: "actions" }, uploadButton)),
    h(
      "form",
      { class: "filters", role: "search", "aria-label": "Filter designs", onsubmit: (e: Event) => e.preventDefault() },
      h("div", { class: "field grow" }, h("label", { for: "design-search" }, "Search"), search),
      h("div", { class: "field" }, h("label", { for: "filter-status" }, "Status"), status),
      h("div", { class: "field" }, h("label", { for: "filter-classification" }, "Classification"), classification),
    ),
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "table designs-table" },
        h("caption", { class: "sr-only" }, "Designs of the organization"),
        h(
          "thead",
          null,
          h("tr", null, ["Part / file", "Version", "Status", "Classification", "Geometry", "Size", "Updated"].map((t) => h("th", { scope: "col" }, t))),
        ),
        body,
      ),
    ),
    count,
  );
  app.main.append(page);
  let unsubscribe: (() => void) | null = null;
  let disposed = false;

  const load = async () => {
    if (!app.org) {
      replace(body, h("tr", null, h("td", { colspan: 7, class: "empty" }, "You are not a member of any organization yet.")));
      app.setClassification([]);
      return;
    }
    try {
      const result = await get<Page<Design>>(
        "/api/designs/" +
          query({
            organization: app.org.id,
            status: status.value,
            classification: classification.value,
            search: search.value.trim(),
            page_size: 100,
            ordering: "-updated_at",
          }),
      );
      if (disposed) return;
      renderRows(result.results);
      count.textContent = `${result.count} design${result.count === 1 ? "" : "s"}${result.count > result.results.length ? `, newest ${result.results.length} shown` : ""}`;
      app.setClassification(result.results.length ? result.results.map((d) => d.classification) : ["UNCLASSIFIED"]);
    } catch (err) {
      replace(body, h("tr", null, h("td", { colspan: 7, class: "empty error" }, err instanceof ApiError ? err.detail : "Could not load designs.")));
    }
  };
  const reload = debounce(() => void load(), 250);

  const renderRows = (designs: Design[]) => {
    if (designs.length === 0) {
      replace(body, h("tr", null, h("td", { colspan: 7, class: "empty" }, "No designs match. Upload a STEP, IGES, STL or BREP file to start.")));
      return;
    }
    replace(
      body,
      designs.map((d) =>
        h(
          "tr",
          { "data-design": d.id },
          h(
            "td",
            { "data-label": "Part / file" },
            h("a", { href: `#/designs/${d.id}`, class: "strong" }, d.part_number),
            h("div", { class: "sub" }, d.filename),
          ),
          h("td", { "data-label": "Version" }, `v${d.version_number}${d.revision ? ` · rev ${d.revision}` : ""}`),
          h("td", { "data-label": "Status" }, statusPill(d.status)),
          h("td", { "data-label": "Classification" }, badge(d.classification)),
          h(
            "td",
            { "data-label": "Geometry" },
            d.is_valid_geometry === null
              ? h("span", { class: "muted" }, "—")
              : d.is_valid_geometry
                ? h("span", { class: "ok" }, "Valid")
                : h("span", { class: "warn" }, `${d.validation_errors.length} issue${d.validation_errors.length === 1 ? "" : "s"}`),
          ),
          h("td", { "data-label": "Size" }, `${d.file_format} · ${bytes(d.file_size_bytes)}`),
          h("td", { "data-label": "Updated" }, when(d.updated_at), h("div", { class: "sub" }, d.uploaded_by_username ?? "")),
        ),
      ),
    );
  };

  const subscribe = () => {
    unsubscribe?.();
    unsubscribe = null;
    if (app.org && app.realtime) {
      unsubscribe = app.realtime.subscribe(
        `org:${app.org.id}`,
        (event) => {
          if (event.event.startsWith("design.") || event.event.startsWith("review.")) reload();
        },
        { onReset: reload },
      );
    }
  };

  search.addEventListener("input", reload);
  status.addEventListener("change", reload);
  classification.addEventListener("change", reload);
  uploadButton.addEventListener("click", async () => {
    if (!app.org) return;
    const series = await all<{ id: string; part_number: string; name: string }>(
      "/api/series/" + query({ organization: app.org.id, page_size: 100, ordering: "part_number" }),
      500,
    );
    openUpload(app, series, reload);
  });
  const offOrg = app.onOrgChange(() => {
    subscribe();
    void load();
  });
  subscribe();
  void load();
  return {
    title: "Designs",
    dispose: () => {
      disposed = true;
      unsubscribe?.();
      offOrg();
      page.remove();
    },
  };
}
