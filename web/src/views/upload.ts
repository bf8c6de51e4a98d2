// Upload dialog: signed upload URL with transfer progress, then the analysis job's live progress.
import { ApiError, get, type Job, post, putFile, type Design } from "../api";
import type { App } from "../app";
import { allowedFor, label } from "../classification";
import { h, replace } from "../dom";
import { bytes } from "../format";

const ACCEPT = ".step,.stp,.p21,.iges,.igs,.stl,.brep,.brp";
const LOCAL_HASH_LIMIT = 256 * 1024 * 1024; // larger files are checked against the server's digest only

interface SeriesRow {
  id: string;
  part_number: string;
  name: string;
}

function progressBlock(id: string, title: string) {
  const bar = h("progress", { id: `${id}-bar`, max: 100, value: 0, "aria-labelledby": `${id}-label` });
  const percent = h("span", { id: `${id}-percent`, class: "percent" }, "0 %");
  const message = h("span", { id: `${id}-message`, class: "muted" });
  const block = h(
    "div",
    { class: "progress-block", id },
    h("div", { class: "progress-head" }, h("span", { id: `${id}-label`, class: "strong" }, title), percent),
    bar,
    message,
  );
  return {
    block,
    set(value: number, text: string) {
      bar.value = value;
      percent.textContent = `${Math.round(value)} %`;
      message.textContent = text;
    },
  };
}

async function sha256(file: File): Promise<string | null> {
  // crypto.subtle exists only in secure contexts (HTTPS, localhost); elsewhere the server's digest is used.
  if (!window.crypto?.subtle || file.size > LOCAL_HASH_LIMIT) return null;
  const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

export function openUpload(app: App, series: SeriesRow[], changed: () => void): void {
  const user = app.user!;
  const org = app.org!;
  const file = h("input", { id: "upload-file", type: "file", accept: ACCEPT, required: true });
  const seriesSelect = h(
    "select",
    { id: "upload-series" },
    series.map((s) => h("option", { value: s.id }, `${s.part_number} — ${s.name}`)),
    h("option", { value: "__new" }, "New part number…"),
  );
  const partNumber = h("input", { id: "upload-part-number", maxlength: 100, placeholder: "e.g. BRK-1001" });
  const partName = h("input", { id: "upload-part-name", maxlength: 200, placeholder: "e.g. Mounting bracket" });
  const newSeries = h(
    "div",
    { class: "field-row", id: "upload-new-series" },
    h("div", { class: "field" }, h("label", { for: "upload-part-number" }, "Part number"), partNumber),
    h("div", { class: "field" }, h("label", { for: "upload-part-name" }, "Name"), partName),
  );
  const revision = h("input", { id: "upload-revision", maxlength: 50, placeholder: "A" });
  const classification = h(
    "select",
    { id: "upload-classification" },
    allowedFor(user.security_clearance_level, user.is_us_person, org.is_us_organization).map((c) => h("option", { value: c }, label(c))),
  );
  const material = h("input", { id: "upload-material", maxlength: 200, placeholder: "e.g. Aluminium 6061-T6" });
  const error = h("p", { class: "form-error", role: "alert" });
  const submit = h("button", { type: "submit", class: "btn primary" }, "Upload");
  const cancel = h("button", { type: "button", class: "btn" }, "Cancel");
  const transfer = progressBlock("transfer", "Transfer");
  const analysis = progressBlock("analysis", "Analysis");
  const status = h("div", { class: "upload-status", "aria-live": "polite" });
  const showNew = () => (newSeries.hidden = seriesSelect.value !== "__new");
  seriesSelect.addEventListener("change", showNew);
  if (series.length === 0) seriesSelect.value = "__new";
  showNew();

  const form = h(
    "form",
    { class: "dialog-body", method: "dialog" },
    h("div", { class: "field" }, h("label", { for: "upload-file" }, "CAD file (STEP, IGES, STL, BREP)"), file),
    h("div", { class: "field" }, h("label", { for: "upload-series" }, "Part number (design series)"), seriesSelect),
    newSeries,
    h(
      "div",
      { class: "field-row" },
      h("div", { class: "field" }, h("label", { for: "upload-revision" }, "Revision"), revision),
      h("div", { class: "field" }, h("label", { for: "upload-classification" }, "Classification"), classification),
    ),
    h("div", { class: "field" }, h("label", { for: "upload-material" }, "Material (optional)"), material),
    error,
    status,
    h("div", { class: "dialog-actions" }, cancel, submit),
  );
  const dialog = h(
    "dialog",
    { class: "dialog", id: "upload-dialog", "aria-labelledby": "upload-title" },
    h("h2", { id: "upload-title" }, "Upload design"),
    form,
  );
  document.body.append(dialog);
  let unsubscribe: (() => void) | null = null;
  const close = () => {
    unsubscribe?.();
    dialog.close();
    dialog.remove();
  };
  cancel.addEventListener("click", close);
  dialog.addEventListener("cancel", () => window.setTimeout(close));
  dialog.showModal();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const chosen = file.files?.[0];
    if (!chosen) {
      error.textContent = "Choose a CAD file.";
      return;
    }
    submit.disabled = true;
    file.disabled = true;
    try {
      let seriesId = seriesSelect.value;
      if (seriesId === "__new") {
        const created = await post<{ id: string }>("/api/series/", {
          organization: org.id,
          part_number: partNumber.value.trim(),
          name: partName.value.trim() || partNumber.value.trim(),
        });
        seriesId = created.id;
      }
      replace(status, transfer.block);
      transfer.set(0, `0 of ${bytes(chosen.size)}`);
      const url = await post<{ upload_url: string; upload_id: string }>("/api/designs/upload-url/", {
        filename: chosen.name,
        file_size: chosen.size,
        content_type: "application/octet-stream",
        series: seriesId,
      });
      const [sent, local] = await Promise.all([
        putFile(url.upload_url, chosen, (done, total) => transfer.set((100 * done) / Math.max(1, total), `${bytes(done)} of ${bytes(total)}`)),
        sha256(chosen),
      ]);
      transfer.set(100, `${bytes(chosen.size)} sent`);
      if (local && sent.file_hash !== `sha256:${local}`) throw new ApiError(422, "HASH_MISMATCH", "The server received different bytes than were sent; try again.");
      const design = await post<Design>("/api/designs/", {
        series: seriesId,
        filename: chosen.name,
        upload_id: url.upload_id,
        revision: revision.value.trim(),
        classification: classification.value,
        material: material.value.trim(),
      });
      const finalized = await post<{ analysis_job_id: string }>(`/api/designs/${design.id}/finalize_upload/`, {
        file_hash: local ? `sha256:${local}` : sent.file_hash,
      });
      changed();
      status.append(analysis.block);
      analysis.set(0, "Queued");
      follow(finalized.analysis_job_id, design.id);
    } catch (err) {
      error.textContent = err instanceof ApiError ? err.detail : "The upload failed.";
      submit.disabled = false;
      file.disabled = false;
    }
  });

  const follow = (jobId: string, designId: string) => {
    let settled = false;
    const show = (job: Pick<Job, "status" | "progress" | "error_message">) => {
      if (settled) return; // a late answer never moves a finished job backwards
      settled = ["SUCCESS", "FAILURE", "CANCELLED"].includes(job.status);
      if (job.status === "SUCCESS") {
        analysis.set(100, "Analysis complete");
        submit.hidden = true;
        cancel.textContent = "Close";
        if (!status.querySelector(".open-design")) {
          status.append(
            h("a", { class: "btn primary open-design", href: `#/designs/${designId}`, onclick: () => window.setTimeout(close) }, "Open design"),
          );
        }
        changed();
      } else if (job.status === "FAILURE" || job.status === "CANCELLED") {
        analysis.set(job.progress.percent, job.error_message ?? "Analysis failed");
        analysis.block.classList.add("failed");
        changed();
      } else {
        analysis.set(job.progress.percent, job.progress.status_message || job.status.toLowerCase());
      }
    };
    const current = () => void get<Job>(`/api/analysis-jobs/${jobId}/`).then(show);
    unsubscribe =
      app.realtime?.subscribe(
        `job:${jobId}`,
        (event) => {
          if (event.event === "job.progress") show({ status: "PROCESSING", progress: event.data, error_message: null });
          if (event.event === "job.status") current();
        },
        { onReady: current }, // the job may have moved before the subscription started
      ) ?? null;
    current();
  };
}
