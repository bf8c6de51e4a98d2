// The job dashboard: the organization's running and recent analysis jobs, live, and the jobs API's metrics.
import { ApiError, get, query, type Design, type Job, type Page } from "../api";
import type { App, View } from "../app";
import { badge } from "../classification";
import { debounce, h, replace } from "../dom";
import { duration, num, stamp, titleCase, when } from "../format";
import { statusPill } from "./designs";

interface Metrics {
  total_count: number;
  success_count: number;
  failure_count: number;
  pending_count: number;
  processing_count: number;
  success_rate: number | null;
  avg_duration_seconds: number | null;
  max_duration_seconds: number | null;
  by_job_type?: (Metrics & { job_type: string })[];
}

interface Failures {
  total_failures: number;
  top_errors: { error: string | null; error_code: string | null; count: number; last_seen: string }[];
}

const ACTIVE = ["PENDING", "PROCESSING"];
const RECENT = 30;

export function jobsView(app: App): View {
  const jobs = new Map<string, Job>();
  const designs = new Map<string, Design | null>();
  const watching = new Map<string, () => void>();
  let disposed = false;
  let orgOff: (() => void) | null = null;

  const cards = h("div", { class: "cards", id: "job-metrics" });
  const running = h("tbody", { id: "running-jobs" });
  const recent = h("tbody", { id: "recent-jobs" });
  const errors = h("div", { id: "top-errors" });
  const page = h(
    "section",
    { class: "page jobs-page", "aria-labelledby": "jobs-title" },
    h("div", { class: "page-head" }, h("h1", { id: "jobs-title" }, "Analysis jobs"), h("p", { class: "muted" }, "Live from the organization's feed.")),
    cards,
    h("h2", null, "Running and queued"),
    h("div", { class: "table-wrap" }, table(["Design", "Type", "Status", "Progress", "Started", "Duration"], running)),
    h("h2", null, "Recent"),
    h("div", { class: "table-wrap" }, table(["Design", "Type", "Status", "Result", "Finished", "Duration"], recent)),
    h("h2", null, "Failures, last 7 days"),
    errors,
  );
  app.main.append(page);

  const designOf = async (id: string) => {
    if (!designs.has(id)) {
      designs.set(id, null);
      try {
        designs.set(id, await get<Design>(`/api/designs/${id}/`));
      } catch {
        // deleted, or no longer visible: the job row stays without a name
      }
    }
    return designs.get(id) ?? null;
  };

  const loadMetrics = async () => {
    if (!app.org) return;
    try {
      const [metrics, failures] = await Promise.all([
        get<Metrics>("/api/analysis-jobs/metrics/"),
        get<Failures>("/api/analysis-jobs/failures/?days=7"),
      ]);
      if (disposed) return;
      const card = (label: string, value: string, id: string) =>
        h("div", { class: "card", id }, h("div", { class: "card-value" }, value), h("div", { class: "card-label" }, label));
      replace(
        cards,
        card("Jobs", num(metrics.total_count, 0), "m-total"),
        card("Running", "0", "m-running"),
        card("Queued", "0", "m-queued"),
        card("Success rate", metrics.success_rate === null ? "—" : `${num(metrics.success_rate, 1)} %`, "m-rate"),
        card("Mean duration", duration(metrics.avg_duration_seconds), "m-mean"),
        card("Failures (7 d)", num(failures.total_failures, 0), "m-failures"),
      );
      replace(
        errors,
        failures.top_errors.length
          ? h(
              "ul",
              { class: "errors" },
              failures.top_errors.map((e) =>
                h("li", null, h("span", { class: "code" }, e.error_code ?? "ERROR"), h("span", null, e.error ?? ""), h("span", { class: "muted small" }, ` ×${e.count}, last ${when(e.last_seen)}`)),
              ),
            )
          : h("p", { class: "muted" }, "No failures."),
      );
      render();
    } catch (err) {
      replace(cards, h("p", { class: "muted" }, err instanceof ApiError ? err.detail : "Metrics are unavailable."));
    }
  };
  const refreshMetrics = debounce(() => void loadMetrics(), 400);

  const render = () => {
    const all = [...jobs.values()].filter((j) => j.organization === app.org?.id);
    const active = all.filter((j) => ACTIVE.includes(j.status)).sort((a, b) => a.created_at.localeCompare(b.created_at));
    const done = all
      .filter((j) => !ACTIVE.includes(j.status))
      .sort((a, b) => (b.completed_at ?? "").localeCompare(a.completed_at ?? ""))
      .slice(0, RECENT);
    // Running and queued counts come from the live rows, not from the last metrics answer.
    const live = (id: string, n: number) => {
      const value = cards.querySelector(`#${id} .card-value`);
      if (value) value.textContent = String(n);
    };
    live("m-running", active.filter((j) => j.status === "PROCESSING").length);
    live("m-queued", active.filter((j) => j.status === "PENDING").length);
    const shown = [...active, ...done];
    app.setClassification(shown.length ? shown.map((j) => j.classification) : ["UNCLASSIFIED"]);
    const name = (j: Job) => {
      const d = designs.get(j.design_asset);
      return h(
        "td",
        { "data-label": "Design" },
        d ? h("a", { href: `#/designs/${d.id}`, class: "strong" }, d.part_number) : h("span", { class: "muted" }, j.design_asset.slice(0, 8)),
        h("div", { class: "sub" }, d ? `${d.filename} · v${d.version_number}` : ""),
        badge(j.classification),
      );
    };
    replace(
      running,
      active.length
        ? active.map((j) =>
            h(
              "tr",
              { "data-job": j.id },
              name(j),
              h("td", { "data-label": "Type" }, titleCase(j.job_type)),
              h("td", { "data-label": "Status" }, statusPill(j.status)),
              h(
                "td",
                { "data-label": "Progress", class: "progress-cell" },
                h("progress", { max: 100, value: j.progress.percent, "aria-label": `Progress of ${j.id}` }),
                h("span", { class: "percent" }, `${j.progress.percent} %`),
                h("div", { class: "sub" }, j.progress.status_message),
              ),
              h("td", { "data-label": "Started" }, j.started_at ? when(j.started_at) : "queued"),
              h("td", { "data-label": "Duration", class: "ticking", "data-since": j.started_at ?? "" }, j.started_at ? duration((Date.now() - Date.parse(j.started_at)) / 1000) : "—"),
            ),
          )
        : h("tr", null, h("td", { colspan: 6, class: "empty" }, "No jobs running.")),
    );
    replace(
      recent,
      done.length
        ? done.map((j) =>
            h(
              "tr",
              { "data-job": j.id },
              name(j),
              h("td", { "data-label": "Type" }, titleCase(j.job_type)),
              h("td", { "data-label": "Status" }, statusPill(j.status)),
              h("td", { "data-label": "Result" }, j.error_message ? h("span", { class: "error-text" }, j.error_message) : h("span", { class: "muted" }, j.retry_count ? `after ${j.retry_count} retries` : "—")),
              h("td", { "data-label": "Finished" }, stamp(j.completed_at)),
              h("td", { "data-label": "Duration" }, duration(j.duration_seconds)),
            ),
          )
        : h("tr", null, h("td", { colspan: 6, class: "empty" }, "No finished jobs yet.")),
    );
  };

  const track = (job: Job) => {
    jobs.set(job.id, job);
    if (ACTIVE.includes(job.status) && !watching.has(job.id) && app.realtime) {
      watching.set(
        job.id,
        app.realtime.subscribe(`job:${job.id}`, (event) => {
          const known = jobs.get(job.id);
          if (!known) return;
          if (event.event === "job.progress") {
            known.progress = { current: event.data.current, total: event.data.total, percent: event.data.percent, status_message: event.data.status_message };
            if (known.status === "PENDING") known.status = "PROCESSING";
            render();
          } else if (event.event === "job.status") {
            void refresh(job.id);
          }
        }, { onReady: () => void refresh(job.id) }),
      );
    }
    if (!ACTIVE.includes(job.status)) {
      watching.get(job.id)?.();
      watching.delete(job.id);
    }
  };

  const refresh = async (id: string) => {
    try {
      const job = await get<Job>(`/api/analysis-jobs/${id}/`);
      await designOf(job.design_asset);
      track(job);
      render();
      refreshMetrics();
    } catch {
      // gone or hidden now
    }
  };

  const load = async () => {
    if (!app.org) return;
    try {
      const [active, latest] = await Promise.all([
        get<Page<Job>>("/api/analysis-jobs/" + query({ status: "PROCESSING", page_size: 100 })),
        get<Page<Job>>("/api/analysis-jobs/" + query({ page_size: 50, ordering: "-created_at" })),
      ]);
      const pending = await get<Page<Job>>("/api/analysis-jobs/" + query({ status: "PENDING", page_size: 100 }));
      if (disposed) return;
      for (const job of [...latest.results, ...pending.results, ...active.results]) track(job);
      await Promise.all([...new Set([...jobs.values()].map((j) => j.design_asset))].slice(0, 100).map(designOf));
      render();
    } catch (err) {
      replace(running, h("tr", null, h("td", { colspan: 6, class: "empty error" }, err instanceof ApiError ? err.detail : "Jobs could not be loaded.")));
    }
  };

  const listen = () => {
    orgOff?.();
    orgOff = null;
    if (!app.org || !app.realtime) return;
    orgOff = app.realtime.subscribe(
      `org:${app.org.id}`,
      (event) => {
        // New jobs appear on the organization's feed; their progress is followed on job:<id>.
        const jobId = event.event === "job.status" ? event.data.job_id : event.data?.analysis_job_id;
        if (jobId) void refresh(jobId);
      },
      // Read the lists once the feed is live, so nothing falls between the two.
      { onReady: () => void load(), onReset: () => void load() },
    );
  };

  const tick = window.setInterval(() => {
    for (const cell of running.querySelectorAll<HTMLElement>("td.ticking")) {
      const since = cell.dataset.since;
      if (since) cell.textContent = duration((Date.now() - Date.parse(since)) / 1000);
    }
  }, 1000);
  const offOrg = app.onOrgChange(() => {
    jobs.clear();
    watching.forEach((off) => off());
    watching.clear();
    listen();
    void loadMetrics();
  });
  listen();
  if (!app.realtime) void load();
  void loadMetrics();
  return {
    title: "Jobs",
    dispose: () => {
      disposed = true;
      window.clearInterval(tick);
      orgOff?.();
      offOrg();
      watching.forEach((off) => off());
      page.remove();
    },
  };
}

function table(headings: string[], body: HTMLElement): HTMLElement {
  return h(
    "table",
    { class: "table" },
    h("thead", null, h("tr", null, headings.map((t) => h("th", { scope: "col" }, t)))),
    body,
  );
}
