// The REST client: same-origin cookie session, the XSRF header on writes, the error envelope as ApiError.

export interface Vec3 {
  x: number;
  y: number;
  z: number;
}

export interface User {
  id: number;
  username: string;
  email: string;
  first_name: string;
  last_name: string;
  is_us_person: boolean;
  security_clearance_level: string;
  is_staff: boolean;
  organizations: { organization_id?: string; organization?: string; organization_name?: string; role?: string }[];
}

export interface Organization {
  id: string;
  name: string;
  slug: string;
  is_us_organization: boolean;
  member_count: number;
}

export interface Member {
  id: number;
  user: number;
  username: string;
  email: string;
  role: string;
}

export interface Finding {
  code: string | null;
  message: string;
  severity: "ERROR" | "WARNING";
}

export interface Design {
  id: string;
  series: string;
  organization: string;
  part_number: string;
  series_name: string | null;
  version_number: number;
  filename: string;
  file_format: string;
  file_size_bytes: number;
  revision: string;
  classification: string;
  status: string;
  is_valid_geometry: boolean | null;
  validation_errors: string[];
  warnings: string[];
  validation_findings: Finding[];
  bounding_box: { min: Vec3; max: Vec3 } | null;
  volume_cubic_mm: number | null;
  surface_area_sq_mm: number | null;
  center_of_mass: Vec3 | null;
  mass_kg: number | null;
  material: string;
  density_kg_m3: number | null;
  length_unit: string | null;
  analysis_job_id: string | null;
  viewable: { bytes: number; triangles: number; within_budget: boolean } | null;
  uploaded_by: number;
  uploaded_by_username: string | null;
  created_at: string;
  updated_at: string;
  version: number;
}

export interface Progress {
  current: number;
  total: number;
  percent: number;
  status_message: string;
}

export interface Job {
  id: string;
  design_asset: string;
  organization: string;
  classification: string;
  job_type: string;
  status: string;
  worker: string | null;
  created_at: string;
  started_at: string | null;
  completed_at: string | null;
  duration_seconds: number | null;
  error_message: string | null;
  error_code: string | null;
  retry_count: number;
  progress: Progress;
}

export interface BomNode {
  id: number;
  parent: number | null;
  path: string;
  depth: number;
  part_name: string;
  part_number: string;
  quantity: number;
  reference_designator: string;
  mass_kg: number | null;
  children: BomNode[];
}

export interface Vote {
  reviewer: number;
  username: string | null;
  decision: "APPROVE" | "REJECT" | null;
  comments: string | null;
  reason: string | null;
  voted_at: string | null;
}

export interface Tally {
  approved: number;
  rejected: number;
  pending: number;
  required: number;
  reviewers: number;
}

export interface Review {
  id: string;
  design_asset: string;
  organization: string;
  classification: string;
  reviewers: number[];
  reviewer_details: { id: number; username: string | null }[];
  status: string;
  outcome: string | null;
  decision_rule: string;
  threshold: number | null;
  veto: boolean;
  required_approvals: number;
  tally: Tally;
  notes: string;
  created_by: number;
  created_by_username: string | null;
  created_at: string;
  completed_at: string | null;
  votes?: Vote[];
  gates?: Gates | null;
}

/** Review rules a version's deltas tripped (GET /api/reviews/{id}/: gates). */
export interface Gates {
  previous_version_number: number | null;
  tripped: { rule_id: string; name: string; effect: string; reason: string }[];
  extra_approvals: number;
  override_required: boolean;
  awaiting_override: boolean;
  override: { username: string; reason: string; at: string } | null;
  deltas_digest: string;
}

export interface Delta {
  from: number | null;
  to: number | null;
  absolute: number | null;
  relative: number | null;
}

export interface BomChange {
  name_path: string;
  part_number: string;
  quantity: number | Delta;
}

export interface DiffPart {
  name_path: string;
  status: string;
  added_volume_mm3: number | null;
  removed_volume_mm3: number | null;
  message?: string;
}

/** GET /api/designs/{id}/compare/?to= */
export interface Compare {
  from: { id: string; version_number: number };
  to: { id: string; version_number: number };
  bom: {
    counts: { added: number; removed: number; quantity_changed: number; unchanged: number };
    added: BomChange[];
    removed: BomChange[];
    quantity_changed: (BomChange & { quantity: Delta })[];
  };
  properties: {
    volume_mm3: Delta;
    surface_area_mm2: Delta;
    mass_kg: Delta;
    center_of_mass: { shift_mm: number | null };
    topology: Record<string, Delta>;
    validity: { errors: { appeared: { code: string }[]; disappeared: { code: string }[] } };
  };
  digest: string;
  geometric_diff: {
    status: string;
    viewable_url: string;
    job_id: string | null;
    error_message: string | null;
    result: { parts: DiffPart[]; unmatched: { added: DiffPart[]; removed: DiffPart[] } } | null;
  };
}

/** GET /api/designs/{id}/carried-markups/ */
export interface CarryOffer {
  status: string;
  from_design?: { version_number: number };
  markups: { markup: { id: number; annotation_text: string }; carry: Carry | null }[];
  carried_into?: string | null;
}

export interface Carry {
  moved: boolean;
  orphaned: boolean;
  distance_mm: number | null;
  reason: string | null;
}

export interface Camera {
  position: Vec3;
  target: Vec3;
  up: Vec3;
  fov: number | null;
}

export interface Markup {
  id: number;
  design_asset: string;
  review_session: string;
  classification: string;
  author: number;
  author_username: string | null;
  position: Vec3;
  camera: Camera | null;
  bom_node: number | null;
  face_index: number | null;
  annotation_text: string;
  severity: "INFO" | "MINOR" | "MAJOR" | "CRITICAL";
  status: "OPEN" | "RESOLVED" | "DISMISSED";
  resolution_notes: string | null;
  dismiss_reason: string | null;
  reply_count: number;
  carried_from?: { markup_id: number; review_id: string; design_id: string } | null;
  carry?: Carry | null;
  created_at: string;
  updated_at: string;
  version: number;
}

export interface Reply {
  id: number;
  author: number;
  author_username: string | null;
  text: string;
  created_at: string;
}

export interface Page<T> {
  count: number;
  next: string | null;
  previous: string | null;
  results: T[];
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    readonly detail: string,
    readonly fieldErrors: Record<string, string[]> = {},
  ) {
    super(detail);
  }
}

const XSRF_COOKIE = "enginel_xsrf";
let xsrfToken = "";
const unauthenticated = new Set<() => void>();

export function setXsrf(token: string): void {
  xsrfToken = token;
}

function xsrf(): string {
  // The cookie survives a page reload; the token from the login answer is used before the cookie is readable.
  const cookie = document.cookie.split("; ").find((c) => c.startsWith(`${XSRF_COOKIE}=`));
  return cookie ? decodeURIComponent(cookie.slice(XSRF_COOKIE.length + 1)) : xsrfToken;
}

export function onUnauthenticated(fn: () => void): void {
  unauthenticated.add(fn);
}

async function errorFrom(resp: Response): Promise<ApiError> {
  let body: { detail?: string; code?: string; field_errors?: Record<string, string[]> } = {};
  try {
    body = await resp.json();
  } catch {
    // not JSON: a proxy's page, or a network error turned into a response
  }
  return new ApiError(resp.status, body.code ?? `HTTP_${resp.status}`, body.detail ?? resp.statusText, body.field_errors);
}

export async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD") headers["X-XSRF-Token"] = xsrf();
  let resp: Response;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "NETWORK_ERROR", "The server cannot be reached. Check the connection and retry.");
  }
  if (resp.status === 401 && !path.startsWith("/api/auth/login/")) {
    unauthenticated.forEach((fn) => fn());
  }
  if (!resp.ok) throw await errorFrom(resp);
  if (resp.status === 204) return undefined as T;
  return (await resp.json()) as T;
}

export const get = <T>(path: string) => request<T>("GET", path);
export const post = <T>(path: string, body?: unknown) => request<T>("POST", path, body ?? {});
export const patch = <T>(path: string, body: unknown) => request<T>("PATCH", path, body);

/** Every page of a list, up to `limit` items (lists are bounded; so is what the page holds). */
export async function all<T>(path: string, limit = 2000): Promise<T[]> {
  const out: T[] = [];
  let next: string | null = path;
  while (next && out.length < limit) {
    const page: Page<T> = await get<Page<T>>(next);
    out.push(...page.results);
    next = page.next ? new URL(page.next).pathname + new URL(page.next).search : null;
  }
  return out;
}

export function query(params: Record<string, string | number | null | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, String(v));
  const text = q.toString();
  return text ? `?${text}` : "";
}

/** PUT a file to a signed upload URL, reporting transfer progress. */
export function putFile(
  url: string,
  file: File,
  onProgress: (sent: number, total: number) => void,
): Promise<{ upload_id: string; file_hash: string; file_size: number }> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    const target = new URL(url, location.href);
    xhr.open("PUT", target.pathname + target.search);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onerror = () => reject(new ApiError(0, "NETWORK_ERROR", "The upload was interrupted."));
    xhr.onload = () => {
      let body: { detail?: string; code?: string } & Record<string, unknown> = {};
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        // left empty
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body as never);
      else reject(new ApiError(xhr.status, body.code ?? `HTTP_${xhr.status}`, body.detail ?? xhr.statusText));
    };
    xhr.send(file);
  });
}

export interface PendingViewable {
  status: string;
  job_id: string;
  job_type: string;
  progress: Progress;
  retry_after: number;
  detail: string;
}

/** The design's GLB, kept in memory only (no-store: nothing survives sign-out in the browser's cache). */
export async function viewable(designId: string): Promise<ArrayBuffer | PendingViewable> {
  const resp = await fetch(`/api/designs/${designId}/viewable/`, {
    credentials: "same-origin",
    cache: "no-store",
    headers: { Accept: "model/gltf-binary, application/json" },
  });
  if (resp.status === 202) return (await resp.json()) as PendingViewable;
  if (!resp.ok) throw await errorFrom(resp);
  return resp.arrayBuffer();
}
