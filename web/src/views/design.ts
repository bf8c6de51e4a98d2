// A design's workspace: the 3D view, details and validation, BOM tree, versions, and its review room.
import {
  ApiError,
  get,
  post,
  query,
  viewable,
  type BomNode,
  type CarryOffer,
  type Compare,
  type Design,
  type Member,
  type PendingViewable,
  type Review,
} from "../api";
import type { App, View } from "../app";
import { badge, label } from "../classification";
import { h, replace } from "../dom";
import { bytes, num, stamp, titleCase, when } from "../format";
import { Viewer, type Pick } from "../viewer/viewer";
import { statusPill } from "./designs";
import { ReviewRoom } from "./review";

type Tab = "details" | "bom" | "review" | "versions";
const OPEN_REVIEW = ["PENDING", "IN_PROGRESS"];

export function designView(app: App, designId: string, initialTab: Tab | null): View {
  let design: Design | null = null;
  let viewer: Viewer | null = null;
  let room: ReviewRoom | null = null;
  let disposed = false;
  let selected: string | null = null;
  let markupMode = false;
  let modelInfo = "";
  const cleanups: (() => void)[] = [];
  const bomByPath = new Map<string, BomNode>();
  const bomById = new Map<number, BomNode>();

  const page = h("section", { class: "workspace", "aria-busy": "true" });
  app.main.append(page);
  replace(page, h("div", { class: "loading" }, "Loading design…"));

  const refuse = (err: unknown) => {
    const e = err instanceof ApiError ? err : new ApiError(0, "ERROR", "The design could not be loaded.");
    const title =
      e.code === "ITAR_VIOLATION"
        ? "Export-controlled design"
        : e.status === 403
          ? "Not cleared for this design"
          : e.status === 404
            ? "Design not found"
            : "Design unavailable";
    const why =
      e.code === "ITAR_VIOLATION"
        ? "This design is ITAR-controlled: only US persons in a US organization may see it or its 3D model."
        : e.status === 403
          ? "Your security clearance is below this design's classification, so neither its data nor its 3D model is shown."
          : e.status === 404
            ? "It does not exist, or it belongs to an organization you are not a member of."
            : "";
    app.setClassification(null);
    replace(
      page,
      h(
        "div",
        { class: "refusal", role: "alert", id: "access-refused", "data-code": e.code },
        h("h1", null, title),
        why ? h("p", null, why) : null,
        h("p", { class: "muted" }, `Server: ${e.detail} (${e.code})`),
        h("a", { class: "btn", href: "#/designs" }, "Back to designs"),
      ),
    );
    page.removeAttribute("aria-busy");
  };

  // Design and model in parallel: the model is the larger download, and both follow the same policy.
  const model = viewable(designId);
  model.catch(() => undefined); // handled below, once the design says how to show it
  void get<Design>(`/api/designs/${designId}/`)
    .then(async (d) => {
      if (disposed) return;
      design = d;
      build(d);
      await showModel(model);
    })
    .catch(async (err) => {
      // Say why with the most specific answer: the model's own refusal names the same policy.
      const modelError = await model.then(() => null, (e: unknown) => e);
      refuse(modelError instanceof ApiError && modelError.status === 403 ? modelError : err);
    });

  // ---------------------------------------------------------------- layout
  const title = h("h1", { id: "design-title" });
  const subtitle = h("div", { class: "sub" });
  const statusSlot = h("span", { id: "design-status" });
  const badgeSlot = h("span");
  const headActions = h("div", { class: "actions" });
  const host = h("div", { class: "viewer-host", id: "viewer-host" });
  const viewerStatus = h("div", { class: "viewer-status", id: "viewer-status", role: "status", "aria-live": "polite" });
  const selection = h("span", { id: "selection-status", class: "selection", role: "status", "aria-live": "polite" });
  const fitButton = h("button", { type: "button", class: "btn small", title: "Fit to view (F)", onclick: () => viewer?.fit() }, "Fit");
  const markupButton = h(
    "button",
    { type: "button", class: "btn small", id: "markup-mode", "aria-pressed": "false", disabled: true, title: "Click the model to place a markup (M)" },
    "Add markup",
  );
  const clearButton = h("button", { type: "button", class: "btn small ghost", hidden: true, onclick: () => select(null) }, "Clear selection");
  const tabs: Record<Tab, HTMLButtonElement> = {
    details: h("button", { type: "button", role: "tab", id: "tab-details", "aria-controls": "panel" }, "Details"),
    bom: h("button", { type: "button", role: "tab", id: "tab-bom", "aria-controls": "panel" }, "BOM"),
    review: h("button", { type: "button", role: "tab", id: "tab-review", "aria-controls": "panel" }, "Review"),
    versions: h("button", { type: "button", role: "tab", id: "tab-versions", "aria-controls": "panel" }, "Versions"),
  };
  const panels: Record<Tab, HTMLElement> = {
    details: h("div", { class: "panel-body" }),
    bom: h("div", { class: "panel-body" }),
    review: h("div", { class: "panel-body" }),
    versions: h("div", { class: "panel-body" }),
  };
  const panel = h("div", { role: "tabpanel", id: "panel", class: "panel", tabindex: 0 });
  let current: Tab = "details";

  const show = (tab: Tab) => {
    current = tab;
    for (const [name, button] of Object.entries(tabs) as [Tab, HTMLButtonElement][]) {
      button.setAttribute("aria-selected", String(name === tab));
      button.tabIndex = name === tab ? 0 : -1;
    }
    panel.setAttribute("aria-labelledby", `tab-${tab}`);
    replace(panel, panels[tab]);
  };

  const build = (d: Design) => {
    page.removeAttribute("aria-busy");
    app.setClassification([d.classification]);
    const tablist = h("div", { role: "tablist", "aria-label": "Design information", class: "tabs" }, Object.values(tabs));
    tablist.addEventListener("keydown", (e) => {
      const order: Tab[] = ["details", "bom", "review", "versions"];
      const step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
      if (!step) return;
      const next = order[(order.indexOf(current) + step + order.length) % order.length];
      show(next);
      tabs[next].focus();
    });
    for (const [name, button] of Object.entries(tabs) as [Tab, HTMLButtonElement][]) button.addEventListener("click", () => show(name));
    replace(
      page,
      h(
        "header",
        { class: "ws-head" },
        h("a", { href: "#/designs", class: "back" }, "← Designs"),
        h("div", { class: "ws-title" }, title, subtitle),
        h("div", { class: "ws-tags" }, statusSlot, badgeSlot),
        headActions,
      ),
      h(
        "div",
        { class: "ws-body" },
        h(
          "div",
          { class: "ws-main" },
          h("div", { class: "viewer-toolbar", role: "toolbar", "aria-label": "3D view" }, fitButton, markupButton, clearButton, selection),
          host,
          viewerStatus,
        ),
        h("aside", { class: "ws-side", "aria-label": "Design information" }, tablist, panel),
      ),
    );
    renderHead(d);
    renderDetails(d);
    show(initialTab ?? "details");
    void loadBom();
    void loadVersions(d);
    void loadReview(initialTab === null);
    const refresh = () =>
      void get<Design>(`/api/designs/${d.id}/`)
        .then((fresh) => {
          if (disposed) return;
          design = fresh;
          renderHead(fresh);
          renderDetails(fresh);
          room?.setDesign(fresh);
          app.setClassification([fresh.classification]);
        })
        .catch((err) => {
          // Reclassified above the viewer's clearance, or deleted, while open: the model goes too.
          if (!(err instanceof ApiError) || (err.status !== 403 && err.status !== 404)) return;
          room?.dispose();
          room = null;
          viewer?.dispose();
          viewer = null;
          refuse(err);
        });
    const off = app.realtime?.subscribe(
      `design:${d.id}`,
      (event) => {
        if (event.event === "design.status" || event.event === "design.updated") refresh();
        if (event.event === "design.deleted") refresh();
        if (event.event === "review.created" || event.event === "review.completed" || event.event === "review.cancelled") {
          void loadReview(event.event === "review.created");
        }
        if (event.event === "subscription.ended") refresh();
      },
      // Once live (and after a gap too long to replay) the stored state is read again: nothing falls between.
      { onReady: refresh, onReset: () => {
        refresh();
        void loadReview(false);
      } },
    );
    if (off) cleanups.push(off);
    const keys = (e: KeyboardEvent) => {
      const target = e.target as HTMLElement;
      if (target.closest("input, textarea, select")) return;
      if (e.key === "m" || e.key === "M") setMarkupMode(!markupMode);
      if (e.key === "Escape") setMarkupMode(false);
    };
    document.addEventListener("keydown", keys);
    cleanups.push(() => document.removeEventListener("keydown", keys));
    markupButton.addEventListener("click", () => setMarkupMode(!markupMode));
  };

  const renderHead = (d: Design) => {
    title.textContent = d.part_number;
    subtitle.textContent = `${d.filename} · v${d.version_number}${d.revision ? ` · rev ${d.revision}` : ""}`;
    replace(statusSlot, statusPill(d.status));
    replace(badgeSlot, badge(d.classification));
    replace(
      headActions,
      h("a", { class: "btn small", href: `/api/designs/${d.id}/download/`, download: d.filename }, "Download"),
    );
  };

  const renderDetails = (d: Design) => {
    const row = (k: string, v: string | Node) => [h("dt", null, k), h("dd", null, v)];
    const box = d.bounding_box;
    const size = box ? `${num(box.max.x - box.min.x)} × ${num(box.max.y - box.min.y)} × ${num(box.max.z - box.min.z)} mm` : "—";
    const findings = d.validation_findings.map((f) => ({ ...f, level: f.severity === "ERROR" ? "error" : "warning" }));
    replace(
      panels.details,
      h(
        "dl",
        { class: "props" },
        row("Status", statusPill(d.status)),
        row("Classification", label(d.classification)),
        row("Format", `${d.file_format} · ${bytes(d.file_size_bytes)}`),
        row("Source unit", d.length_unit ?? "—"),
        row("Bounding box", size),
        row("Volume", d.volume_cubic_mm === null ? "—" : `${num(d.volume_cubic_mm)} mm³`),
        row("Surface area", d.surface_area_sq_mm === null ? "—" : `${num(d.surface_area_sq_mm)} mm²`),
        row("Material", d.material || "—"),
        row("Mass", d.mass_kg === null ? "—" : `${num(d.mass_kg, 3)} kg`),
        row("Uploaded", `${stamp(d.created_at)} by ${d.uploaded_by_username ?? "—"}`),
        row("3D model", d.viewable ? `${num(d.viewable.triangles, 0)} triangles · ${bytes(d.viewable.bytes)}` : "made on first view"),
      ),
      h("h3", null, "Validation"),
      d.is_valid_geometry === null
        ? h("p", { class: "muted" }, "Not analysed yet.")
        : findings.length === 0
          ? h("p", { class: "ok" }, "Valid geometry: closed solids, no findings.")
          : h(
              "ul",
              { class: "findings", id: "findings" },
              findings.map((f) =>
                h("li", { class: f.level }, h("span", { class: "code" }, f.code ?? f.severity), h("span", null, f.message)),
              ),
            ),
    );
  };

  // ---------------------------------------------------------------- model
  const showModel = async (pending: Promise<ArrayBuffer | PendingViewable>) => {
    let answer: ArrayBuffer | PendingViewable;
    try {
      answer = await pending;
    } catch (err) {
      replace(host, h("div", { class: "viewer-message error", role: "alert" }, err instanceof ApiError ? err.detail : "The 3D model could not be loaded."));
      return;
    }
    if (disposed) return;
    if (answer instanceof ArrayBuffer) {
      await mountViewer(answer);
      return;
    }
    waitForModel(answer);
  };

  const waitForModel = (first: PendingViewable) => {
    const bar = h("progress", { max: 100, value: first.progress.percent, id: "model-progress", "aria-label": "3D model preparation" });
    const text = h("span", null, first.progress.status_message || "Queued");
    replace(host, h("div", { class: "viewer-message" }, h("p", { class: "strong" }, "Preparing the 3D model…"), bar, text));
    let done = false;
    const retry = async () => {
      if (done || disposed) return;
      try {
        const answer = await viewable(designId);
        if (answer instanceof ArrayBuffer) {
          done = true;
          off?.();
          window.clearInterval(poll);
          await mountViewer(answer);
        } else {
          bar.value = answer.progress.percent;
          text.textContent = answer.progress.status_message;
        }
      } catch (err) {
        done = true;
        off?.();
        window.clearInterval(poll);
        replace(host, h("div", { class: "viewer-message error", role: "alert" }, err instanceof ApiError ? err.detail : "The 3D model could not be made."));
      }
    };
    const off = app.realtime?.subscribe(
      `job:${first.job_id}`,
      (event) => {
        if (event.event === "job.progress") {
          bar.value = event.data.percent;
          text.textContent = event.data.status_message;
        } else if (event.event === "job.status" && ["SUCCESS", "FAILURE", "CANCELLED"].includes(event.data.status)) {
          void retry();
        }
      },
      { onReady: () => void retry() }, // it may have finished before the subscription started
    );
    // The socket may be down or the job done already: ask again now and then, as the 202 answer says.
    const poll = window.setInterval(() => void retry(), Math.max(2, first.retry_after) * 2500);
    cleanups.push(() => {
      done = true;
      off?.();
      window.clearInterval(poll);
    });
  };

  const mountViewer = async (buffer: ArrayBuffer) => {
    replace(host);
    viewer = new Viewer(host);
    try {
      const info = await viewer.load(buffer);
      modelInfo = `${num(info.triangles, 0)} triangles · ${info.parts} BOM rows · millimetres`;
      viewerStatus.textContent = modelInfo;
      host.dataset.loaded = "true";
    } catch {
      replace(host, h("div", { class: "viewer-message error", role: "alert" }, "The 3D model could not be read."));
      return;
    }
    viewer.onPick = (pick, event) => onPick(pick, event);
    room?.attachViewer(viewer);
    if (selected) select(selected, false);
  };

  const onPick = (pick: Pick | null, event: PointerEvent) => {
    if (markupMode && room) {
      if (pick) room.compose(pick, event);
      return;
    }
    select(pick?.bomPath ?? null, false, true);
  };

  const setMarkupMode = (on: boolean) => {
    markupMode = on && !!room?.canWrite();
    markupButton.setAttribute("aria-pressed", String(markupMode));
    markupButton.classList.toggle("active", markupMode);
    host.classList.toggle("placing", markupMode);
    viewerStatus.textContent = markupMode ? "Click on the model where the markup belongs (Esc to stop)." : modelInfo;
  };

  /** Select a BOM row: highlight and (from the tree) frame its instances; from the view, show its row. */
  const select = (path: string | null, frame = true, fromViewer = false) => {
    selected = path;
    const node = path ? bomByPath.get(path) : null;
    const count = viewer && path ? viewer.highlight([path]) : (viewer?.highlight([]), 0);
    if (path && frame) viewer?.fit([path]);
    selection.textContent = node ? `${node.part_name} — ${count} instance${count === 1 ? "" : "s"}` : "";
    clearButton.hidden = !path;
    for (const el of panels.bom.querySelectorAll<HTMLElement>(".bom-row")) {
      const on = el.dataset.path === path;
      el.classList.toggle("selected", on);
      el.setAttribute("aria-selected", String(on));
      if (on && fromViewer) el.scrollIntoView({ block: "nearest" });
    }
    if (fromViewer && path && (current === "details" || current === "versions")) show("bom");
    room?.shareSelection(path ? [path] : []);
  };

  // ---------------------------------------------------------------- BOM, versions, review
  const loadBom = async () => {
    try {
      const bom = await get<{ tree: BomNode[]; total_parts: number; node_count: number; total_mass_kg: number | null }>(
        `/api/designs/${designId}/bom/`,
      );
      const walk = (nodes: BomNode[]) =>
        nodes.forEach((n) => {
          bomByPath.set(n.path, n);
          bomById.set(n.id, n);
          walk(n.children);
        });
      walk(bom.tree);
      const rows: HTMLElement[] = [];
      const render = (nodes: BomNode[]) =>
        nodes.forEach((n) => {
          rows.push(
            h(
              "button",
              {
                type: "button",
                class: "bom-row",
                role: "treeitem",
                "aria-level": n.depth,
                "aria-selected": "false",
                "data-path": n.path,
                "data-name": n.part_name,
                onclick: () => select(n.path),
              },
              h("span", { class: "indent", "data-depth": Math.min(n.depth - 1, 8) }),
              h("span", { class: "bom-name" }, n.part_name),
              h("span", { class: "qty" }, `× ${n.quantity}`),
              h("span", { class: "pn" }, n.part_number !== n.part_name ? n.part_number : ""),
            ),
          );
          render(n.children);
        });
      render(bom.tree);
      replace(
        panels.bom,
        h("p", { class: "muted" }, `${bom.total_parts} parts in ${bom.node_count} rows${bom.total_mass_kg ? ` · ${num(bom.total_mass_kg, 3)} kg` : ""}. Select a row to find it in the model.`),
        h("div", { class: "bom-tree", role: "tree", "aria-label": "Bill of materials" }, rows),
      );
    } catch (err) {
      replace(panels.bom, h("p", { class: "muted" }, err instanceof ApiError ? err.detail : "No bill of materials."));
    }
  };

  const loadVersions = async (d: Design) => {
    try {
      const versions = await get<Design[]>(`/api/series/${d.series}/designs/`);
      replace(
        panels.versions,
        h(
          "ol",
          { class: "versions", reversed: true },
          versions
            .slice()
            .reverse()
            .map((v) =>
              h(
                "li",
                { class: v.id === d.id ? "current" : "" },
                h("a", { href: `#/designs/${v.id}` }, `v${v.version_number}`),
                " ",
                statusPill(v.status),
                " ",
                badge(v.classification),
                v.id !== d.id
                  ? h("button", { type: "button", class: "btn tiny", onclick: () => void showCompare(v, d) }, `Changes v${v.version_number} → v${d.version_number}`)
                  : null,
                h("div", { class: "sub" }, `${v.filename} · ${when(v.created_at)} · ${v.uploaded_by_username ?? ""}`),
              ),
            ),
        ),
        compareBox,
      );
    } catch {
      replace(panels.versions, h("p", { class: "muted" }, "Versions are not available."));
    }
  };

  // The compare of two versions (GET /api/designs/{id}/compare/?to=), and the geometric diff on request.
  const compareBox = h("div", { class: "compare", id: "compare", "aria-live": "polite" });
  const pct = (r: number | null) => (r === null ? "" : ` (${r >= 0 ? "+" : ""}${(100 * r).toFixed(2)} %)`);
  const showCompare = async (from: Design, to: Design) => {
    replace(compareBox, h("p", { class: "muted" }, "Comparing…"));
    try {
      const c = await get<Compare>(`/api/designs/${from.id}/compare/` + query({ to: to.id }));
      const p = c.properties;
      const row = (name: string, text: string) => h("tr", null, h("th", { scope: "row" }, name), h("td", null, text));
      const change = (label: string, delta: { absolute: number | null; relative: number | null }, unit: string, digits: number) =>
        row(label, delta.absolute === null ? "—" : `${delta.absolute >= 0 ? "+" : ""}${num(delta.absolute, digits)} ${unit}${pct(delta.relative)}`);
      const list = (title: string, items: string[]) => (items.length ? h("div", null, h("p", { class: "strong" }, title), h("ul", null, items.map((t) => h("li", null, t)))) : null);
      const diff = c.geometric_diff;
      const diffPanel = h("div", { class: "diff" });
      const renderDiff = () => {
        const result = diff.result;
        if (!result) {
          const button = h("button", { type: "button", class: "btn small" }, diff.status === "NOT_STARTED" ? "Compute the geometric diff" : `Geometric diff: ${diff.status.toLowerCase()}`);
          button.addEventListener("click", async () => {
            button.disabled = true;
            const pending = await get<{ job_id?: string }>(diff.viewable_url).catch(() => null);
            button.textContent = pending?.job_id ? "Computing the geometric diff…" : "Geometric diff ready";
            setTimeout(() => void showCompare(from, to), 2000);
          });
          replace(diffPanel, button, diff.error_message ? h("p", { class: "form-error" }, diff.error_message) : null);
          return;
        }
        replace(
          diffPanel,
          h("p", { class: "strong" }, "Material removed and added, per part"),
          h(
            "ul",
            null,
            result.parts
              .filter((part) => part.status !== "identical" && part.status !== "unchanged")
              .map((part) =>
                h(
                  "li",
                  null,
                  part.name_path,
                  part.status === "compared"
                    ? ` — removed ${num(part.removed_volume_mm3 ?? 0, 1)} mm³, added ${num(part.added_volume_mm3 ?? 0, 1)} mm³`
                    : ` — ${part.status.replace("_", " ")}${part.message ? `: ${part.message}` : ""}`,
                ),
              ),
          ),
        );
      };
      renderDiff();
      replace(
        compareBox,
        h("h4", null, `v${c.from.version_number} → v${c.to.version_number}`),
        h(
          "table",
          { class: "compare-table" },
          change("Volume", p.volume_mm3, "mm³", 1),
          change("Mass", p.mass_kg, "kg", 4),
          change("Surface area", p.surface_area_mm2, "mm²", 1),
          row("Centre of mass", p.center_of_mass.shift_mm === null ? "—" : `moved ${num(p.center_of_mass.shift_mm, 3)} mm`),
          change("Faces", p.topology.faces, "", 0),
        ),
        list("Parts added", c.bom.added.map((r) => `${r.name_path} (${r.part_number})`)),
        list("Parts removed", c.bom.removed.map((r) => `${r.name_path} (${r.part_number})`)),
        list(
          "Quantity changed",
          c.bom.quantity_changed.map((r) => `${r.name_path}: ${r.quantity.from} → ${r.quantity.to}`),
        ),
        list("Validation errors that appeared", p.validity.errors.appeared.map((e) => e.code)),
        diffPanel,
      );
    } catch (err) {
      replace(compareBox, h("p", { class: "muted" }, err instanceof ApiError ? err.detail : "The versions cannot be compared."));
    }
  };

  const loadReview = async (focus: boolean) => {
    if (!design) return;
    try {
      const list = await get<{ results: Review[] }>("/api/reviews/" + query({ design_asset: designId, ordering: "-created_at", page_size: 1 }));
      const latest = list.results[0];
      if (latest && (OPEN_REVIEW.includes(latest.status) || room?.reviewId === latest.id)) {
        const detail = await get<Review>(`/api/reviews/${latest.id}/`);
        if (disposed) return;
        if (room?.reviewId === detail.id) {
          room.setReview(detail);
        } else {
          room?.dispose();
          room = new ReviewRoom(app, design, detail, {
            node: (path) => bomByPath.get(path) ?? null,
            nodeById: (id) => bomById.get(id) ?? null,
            select: (path) => select(path),
            stopPlacing: () => setMarkupMode(false),
          });
          replace(panels.review, room.element);
          if (viewer) room.attachViewer(viewer);
        }
        markupButton.disabled = !room.canWrite();
        if (focus) show("review");
        return;
      }
      room?.dispose();
      room = null;
      markupButton.disabled = true;
      setMarkupMode(false);
      renderStartReview(latest ?? null);
    } catch (err) {
      replace(panels.review, h("p", { class: "muted" }, err instanceof ApiError ? err.detail : "Reviews are not available."));
    }
  };

  const renderStartReview = (last: Review | null) => {
    const d = design!;
    const past = last
      ? h("p", { class: "muted" }, `Last review ${last.status.toLowerCase()}${last.outcome ? `: ${last.outcome.toLowerCase()}` : ""} · ${when(last.completed_at ?? last.created_at)}`)
      : null;
    if (d.status !== "READY") {
      replace(panels.review, h("p", null, `A review can start once the design is READY (it is ${titleCase(d.status)}).`), past);
      return;
    }
    const error = h("p", { class: "form-error", role: "alert" });
    const people = h("fieldset", { class: "reviewers" }, h("legend", null, "Reviewers"), h("p", { class: "muted" }, "Loading members…"));
    const rule = h(
      "select",
      { id: "review-rule" },
      h("option", { value: "ALL" }, "All reviewers approve"),
      h("option", { value: "ANY" }, "Any one reviewer approves"),
      h("option", { value: "THRESHOLD" }, "A number of approvals"),
    );
    const threshold = h("input", { id: "review-threshold", type: "number", min: 1, value: 1 });
    const thresholdField = h("div", { class: "field" }, h("label", { for: "review-threshold" }, "Approvals needed"), threshold);
    thresholdField.hidden = true;
    rule.addEventListener("change", () => (thresholdField.hidden = rule.value !== "THRESHOLD"));
    const notes = h("textarea", { id: "review-notes", rows: 2, maxlength: 5000 });
    // The previous version's open markups, re-anchored on this one, may come along.
    const carry = h("input", { type: "checkbox", id: "review-carry" }) as HTMLInputElement;
    const carryField = h("div", { class: "field" }, h("label", { class: "check", for: "review-carry" }, carry, " "), h("span", { class: "muted" }));
    carryField.hidden = true;
    void get<CarryOffer>(`/api/designs/${d.id}/carried-markups/`)
      .then((offer) => {
        if (offer.status !== "READY" || !offer.markups.length || offer.carried_into) return;
        const moved = offer.markups.filter((m) => m.carry?.moved).length;
        const orphaned = offer.markups.filter((m) => m.carry?.orphaned).length;
        replace(
          carryField,
          h("label", { class: "check", for: "review-carry" }, carry, ` Carry ${offer.markups.length} open markup(s) from v${offer.from_design?.version_number ?? "?"}`),
          h("span", { class: "muted small" }, ` (${moved} moved, ${orphaned} orphaned)`),
        );
        carry.checked = true;
        carryField.hidden = false;
      })
      .catch(() => undefined);
    const start = h("button", { type: "submit", class: "btn primary", id: "start-review" }, "Start review");
    const form = h(
      "form",
      { class: "start-review" },
      h("h3", null, "Start a review"),
      people,
      h("div", { class: "field" }, h("label", { for: "review-rule" }, "Decision rule"), rule),
      thresholdField,
      h("div", { class: "field" }, h("label", { for: "review-notes" }, "Notes for reviewers"), notes),
      carryField,
      error,
      start,
    );
    replace(panels.review, past, form);
    void get<Member[]>(`/api/organizations/${d.organization}/members/`)
      .then((members) => {
        const others = members.filter((m) => m.user !== app.user?.id && m.role !== "VIEWER");
        replace(
          people,
          h("legend", null, "Reviewers"),
          others.length
            ? others.map((m) =>
                h(
                  "label",
                  { class: "check" },
                  h("input", { type: "checkbox", name: "reviewer", value: m.user }),
                  ` ${m.username} `,
                  h("span", { class: "muted" }, titleCase(m.role)),
                ),
              )
            : h("p", { class: "muted" }, "No other members to invite."),
        );
      })
      .catch(() => replace(people, h("legend", null, "Reviewers"), h("p", { class: "muted" }, "Members are not visible to you.")));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      error.textContent = "";
      const reviewers = Array.from(people.querySelectorAll<HTMLInputElement>("input[name=reviewer]:checked"), (i) => Number(i.value));
      if (!reviewers.length) {
        error.textContent = "Choose at least one reviewer.";
        return;
      }
      start.disabled = true;
      try {
        await post<Review>("/api/reviews/", {
          design_asset: d.id,
          reviewers,
          decision_rule: rule.value,
          ...(rule.value === "THRESHOLD" ? { threshold: Number(threshold.value) } : {}),
          notes: notes.value,
          ...(carry.checked && !carryField.hidden ? { carry_markups: true } : {}),
        });
        await loadReview(true);
      } catch (err) {
        error.textContent = err instanceof ApiError ? err.detail : "The review could not start.";
        start.disabled = false;
      }
    });
  };

  return {
    title: "Design",
    dispose: () => {
      disposed = true;
      cleanups.forEach((fn) => fn());
      room?.dispose();
      viewer?.dispose();
      viewer = null;
      page.remove();
    },
  };
}
