// The review room: markups on the model, their threads, votes and the tally, and who else is in the room.
import { all, ApiError, get, post, type BomNode, type Camera, type Carry, type Design, type Markup, type Reply, type Review } from "../api";
import type { App } from "../app";
import { h, replace, throttle } from "../dom";
import { stamp, titleCase, when } from "../format";
import type { EventMessage, PresenceMember } from "../realtime";
import type { Pick, Viewer } from "../viewer/viewer";
import { statusPill } from "./designs";

const SEVERITIES = ["INFO", "MINOR", "MAJOR", "CRITICAL"] as const;
const REASONS = [
  "INCORRECT_DIMENSIONS",
  "TOLERANCE_ISSUE",
  "MATERIAL_ISSUE",
  "INVALID_GEOMETRY",
  "MANUFACTURABILITY",
  "REQUIREMENTS_NOT_MET",
  "SAFETY_CONCERN",
  "COMPLIANCE_ISSUE",
];
const OPEN = ["PENDING", "IN_PROGRESS"];

interface Hooks {
  node(path: string): BomNode | null;
  nodeById(id: number): BomNode | null;
  select(path: string | null): void;
  stopPlacing(): void;
}

function vec(v: number[]): { x: number; y: number; z: number } {
  return { x: v[0], y: v[1], z: v[2] };
}

function colour(userId: number): string {
  return `c${userId % 8}`;
}

export class ReviewRoom {
  readonly element = h("div", { class: "review-room", id: "review-room" });
  private readonly channel: string;
  private markups = new Map<number, Markup>();
  private replies = new Map<number, Reply[]>();
  private openThreads = new Set<number>();
  private members = new Map<string, PresenceMember>();
  private selectedMarkup: number | null = null;
  private following: string | null = null;
  private viewer: Viewer | null = null;
  private presenceQueue: Record<string, unknown> = {};
  private offs: (() => void)[] = [];
  private disposed = false;
  private readonly head = h("div", { class: "review-head" });
  private readonly tally = h("div", { class: "tally", id: "review-tally", "aria-live": "polite" });
  private readonly votes = h("div", { class: "votes" });
  private readonly presence = h("div", { class: "presence", id: "presence", "aria-live": "polite" });
  private readonly list = h("ol", { class: "markups", id: "markup-list", "aria-label": "Markups" });
  private readonly alerts = h("div", { class: "room-alerts" });
  private readonly composer = h("div", { class: "composer", id: "markup-composer", hidden: true });
  private showClosed = true;
  private closing: { id: number; how: "resolve" | "dismiss" } | null = null;
  private voteBox: HTMLElement | null = null;
  // Items are kept by id and rebuilt only when they change, and forms live across rebuilds: a live event
  // arriving while someone types a reply must not take their text or their focus away.
  private items = new Map<number, { el: HTMLElement; sig: string }>();
  private forms = new Map<string, HTMLFormElement>();

  constructor(
    private readonly app: App,
    private design: Design,
    private review: Review,
    private readonly hooks: Hooks,
  ) {
    this.channel = `review:${review.id}`;
    const filter = h("label", { class: "check small" }, h("input", { type: "checkbox", checked: true, id: "show-closed" }), " Show resolved and dismissed");
    filter.querySelector("input")!.addEventListener("change", (e) => {
      this.showClosed = (e.target as HTMLInputElement).checked;
      this.renderMarkups();
    });
    replace(
      this.element,
      this.alerts,
      this.head,
      this.tally,
      this.votes,
      h("h3", null, "In the room"),
      this.presence,
      h("div", { class: "markups-head" }, h("h3", null, "Markups"), filter),
      this.composer,
      this.list,
    );
    this.render();
    const realtime = app.realtime;
    if (realtime) {
      this.offs.push(
        realtime.subscribe(this.channel, (event) => this.onEvent(event), {
          onReady: () => {
            void this.loadPresence();
            // Present with a view from the start, so others can follow before this user moves.
            if (this.viewer) this.share({ camera: this.presenceCamera() });
          },
          onReset: () => this.lostEvents(),
          onFailure: (error) => this.alert(`Live updates are unavailable: ${error.message}`),
        }),
      );
      this.offs.push(
        realtime.onState((state) => {
          if (state !== "online") {
            this.members.clear();
            this.renderPresence();
          }
        }),
      );
    }
    void this.loadMarkups();
  }

  get reviewId(): string {
    return this.review.id;
  }

  canWrite(): boolean {
    return OPEN.includes(this.review.status);
  }

  setReview(review: Review): void {
    this.review = review;
    this.render();
  }

  setDesign(design: Design): void {
    this.design = design;
    this.renderHead();
  }

  attachViewer(viewer: Viewer): void {
    this.viewer = viewer;
    viewer.onPinClick = (id) => this.focusMarkup(id, true);
    viewer.onCamera = throttle(() => this.share({ camera: this.presenceCamera() }), 250);
    viewer.onHover = throttle((pick: Pick | null) => {
      this.share({ cursor: pick ? [pick.point.x, pick.point.y, pick.point.z] : null });
    }, 200);
    viewer.element.addEventListener("pointerdown", () => this.follow(null));
    viewer.element.addEventListener("wheel", () => this.follow(null), { passive: true });
    this.share({ camera: this.presenceCamera() });
    this.renderPins();
    this.renderCursors();
  }

  shareSelection(paths: string[]): void {
    this.share({ selection: paths });
  }

  dispose(): void {
    this.disposed = true;
    this.offs.forEach((fn) => fn());
    if (this.viewer) {
      this.viewer.setPins([]);
      this.viewer.setCursors([]);
      this.viewer.onPinClick = this.viewer.onCamera = this.viewer.onHover = null;
    }
    this.element.remove();
  }

  // ---------------------------------------------------------------- composing a markup
  compose(pick: Pick, _event: PointerEvent): void {
    if (!this.canWrite()) return;
    const node = pick.bomPath ? this.hooks.node(pick.bomPath) : null;
    const text = h("textarea", { id: "markup-text", rows: 3, maxlength: 5000, required: true, placeholder: "What needs attention here?" });
    const severity = h("select", { id: "markup-severity" }, SEVERITIES.map((s) => h("option", { value: s }, titleCase(s))));
    const error = h("p", { class: "form-error", role: "alert" });
    const save = h("button", { type: "submit", class: "btn primary", id: "markup-save" }, "Place markup");
    const cancel = h("button", { type: "button", class: "btn" }, "Cancel");
    const camera = this.viewer?.getCamera() ?? null;
    const form = h(
      "form",
      { "aria-label": "New markup" },
      h(
        "p",
        { class: "muted small" },
        `At ${pick.point.x.toFixed(1)}, ${pick.point.y.toFixed(1)}, ${pick.point.z.toFixed(1)} mm`,
        node ? ` on ${node.part_name}` : "",
        pick.faceIndex !== null ? `, face ${pick.faceIndex}` : "",
      ),
      h("div", { class: "field" }, h("label", { for: "markup-text" }, "Comment"), text),
      h("div", { class: "field" }, h("label", { for: "markup-severity" }, "Severity"), severity),
      error,
      h("div", { class: "dialog-actions" }, cancel, save),
    );
    const close = () => {
      this.composer.hidden = true;
      replace(this.composer);
    };
    cancel.addEventListener("click", close);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (!text.value.trim()) {
        error.textContent = "Write a comment.";
        return;
      }
      save.disabled = true;
      try {
        const created = await post<Markup>("/api/markups/", {
          review_session: this.review.id,
          design_asset: this.design.id,
          position: pick.point,
          camera: camera ? { position: camera.position, target: camera.target, up: camera.up, fov: camera.fov } : undefined,
          bom_node: node?.id ?? undefined,
          face_index: pick.faceIndex ?? undefined,
          annotation_text: text.value.trim(),
          severity: severity.value,
        });
        this.upsert(created);
        close();
        this.hooks.stopPlacing();
        this.focusMarkup(created.id, false);
      } catch (err) {
        error.textContent = err instanceof ApiError ? err.detail : "The markup could not be saved.";
        save.disabled = false;
      }
    });
    replace(this.composer, h("h4", null, "New markup"), form);
    this.composer.hidden = false;
    text.focus();
  }

  // ---------------------------------------------------------------- live events
  private onEvent(event: EventMessage): void {
    const data = event.data ?? {};
    switch (event.event) {
      case "markup.created":
      case "markup.updated":
      case "markup.resolved":
      case "markup.dismissed":
        if (data.markup) this.upsert(data.markup as Markup);
        break;
      case "markup.deleted":
        this.markups.delete(data.markup_id);
        this.renderMarkups();
        break;
      case "markup.reply":
        this.addReply(data.markup_id, data.reply as Reply);
        break;
      case "review.vote":
        this.review = { ...this.review, tally: data.tally, status: data.status };
        if (this.review.votes) {
          this.review.votes = this.review.votes.map((v) =>
            v.reviewer === data.reviewer ? { ...v, decision: data.decision, comments: data.comments, reason: data.reason, voted_at: data.voted_at } : v,
          );
        }
        this.render();
        break;
      case "review.completed":
      case "review.cancelled":
      case "review.updated":
        void get<Review>(`/api/reviews/${this.review.id}/`).then((r) => this.setReview(r));
        break;
      case "presence.join":
      case "presence.update":
        this.members.set(data.client, data as PresenceMember);
        if (this.following === data.client && data.camera) this.viewer?.setCamera(this.fromPresence(data.camera), true);
        this.renderPresence();
        this.renderCursors();
        break;
      case "presence.leave":
        this.members.delete(data.client);
        if (this.following === data.client) this.following = null;
        this.renderPresence();
        this.renderCursors();
        break;
      case "subscription.ended":
        this.alert(`Live updates ended: ${data.reason ?? "access changed"}.`);
        break;
    }
  }

  private lostEvents(): void {
    const reload = h("button", { type: "button", class: "btn small", id: "reload-room" }, "Reload");
    const banner = h(
      "div",
      { class: "reload-banner", role: "alert", id: "reload-banner" },
      h("span", null, "The connection was lost for too long to replay what changed. "),
      reload,
    );
    reload.addEventListener("click", async () => {
      banner.remove();
      this.markups.clear();
      await this.loadMarkups();
      this.setReview(await get<Review>(`/api/reviews/${this.review.id}/`));
    });
    replace(this.alerts, banner);
  }

  private alert(message: string): void {
    replace(this.alerts, h("div", { class: "reload-banner", role: "alert" }, message));
  }

  private upsert(markup: Markup): void {
    const known = this.markups.get(markup.id);
    if (known && known.version > markup.version) return; // an older copy arriving late
    this.markups.set(markup.id, markup);
    this.renderMarkups();
  }

  private addReply(markupId: number, reply: Reply): void {
    const thread = this.replies.get(markupId);
    const markup = this.markups.get(markupId);
    if (thread && !thread.some((r) => r.id === reply.id)) {
      thread.push(reply);
      if (markup) markup.reply_count = Math.max(markup.reply_count, thread.length);
    } else if (!thread && markup) {
      markup.reply_count += 1;
    }
    this.renderMarkups();
  }

  private async loadMarkups(): Promise<void> {
    try {
      const items = await all<Markup>(`/api/markups/?review_session=${this.review.id}&page_size=100&ordering=created_at`);
      if (this.disposed) return;
      for (const m of items) this.upsert(m);
      this.renderMarkups();
    } catch (err) {
      this.alert(err instanceof ApiError ? err.detail : "Markups could not be loaded.");
    }
  }

  private async loadPresence(): Promise<void> {
    if (!this.app.realtime || this.disposed) return;
    try {
      const members = await this.app.realtime.presence(this.channel);
      this.members = new Map(members.map((m) => [m.client, m]));
      this.renderPresence();
      this.renderCursors();
    } catch {
      // not subscribed yet (the subscribe answer comes first): the join events fill the list
    }
  }

  // ---------------------------------------------------------------- presence
  private share(fields: Record<string, unknown>): void {
    Object.assign(this.presenceQueue, fields);
    this.flushPresence();
  }

  private readonly flushPresence = throttle(() => {
    const body = this.presenceQueue;
    this.presenceQueue = {};
    this.app.realtime?.send("presence.update", { channel: this.channel, ...body }).catch(() => undefined);
  }, 250);

  private presenceCamera(): Record<string, unknown> | null {
    const c = this.viewer?.getCamera();
    if (!c) return null;
    const arr = (v: { x: number; y: number; z: number }) => [v.x, v.y, v.z];
    return { position: arr(c.position), target: arr(c.target), up: arr(c.up), fov: c.fov };
  }

  private fromPresence(camera: NonNullable<PresenceMember["camera"]>): Camera {
    return {
      position: vec(camera.position),
      target: vec(camera.target),
      up: camera.up ? vec(camera.up) : { x: 0, y: 0, z: 1 },
      fov: camera.fov ?? null,
    };
  }

  private follow(client: string | null): void {
    if (this.following === client) return;
    this.following = client;
    const member = client ? this.members.get(client) : null;
    if (member?.camera) this.viewer?.setCamera(this.fromPresence(member.camera), true);
    this.renderPresence();
  }

  private renderPresence(): void {
    const me = this.app.user?.id;
    const people = [...this.members.values()].sort((a, b) => a.user.username.localeCompare(b.user.username));
    if (people.length === 0) {
      replace(this.presence, h("p", { class: "muted small" }, this.app.realtime?.state === "online" ? "Only you." : "Not connected."));
      return;
    }
    replace(
      this.presence,
      h(
        "ul",
        { class: "people" },
        people.map((m) => {
          const mine = m.user.id === me;
          const part = m.selection?.length ? this.hooks.node(m.selection[0])?.part_name : null;
          return h(
            "li",
            { class: `person ${colour(m.user.id)}`, "data-user": m.user.username },
            h("span", { class: "dot", "aria-hidden": "true" }),
            h("span", { class: "strong" }, m.user.username),
            mine ? h("span", { class: "muted" }, " (you)") : null,
            part ? h("span", { class: "muted small" }, ` · ${part}`) : null,
            !mine && m.camera
              ? h(
                  "button",
                  {
                    type: "button",
                    class: `btn tiny${this.following === m.client ? " active" : ""}`,
                    "aria-pressed": String(this.following === m.client),
                    onclick: () => this.follow(this.following === m.client ? null : m.client),
                  },
                  this.following === m.client ? "Following" : "Follow",
                )
              : null,
          );
        }),
      ),
    );
  }

  private renderCursors(): void {
    const me = this.app.user?.id;
    this.viewer?.setCursors(
      [...this.members.values()]
        .filter((m) => m.user.id !== me && m.cursor)
        .map((m) => ({ id: m.client, name: m.user.username, color: colour(m.user.id), position: m.cursor as number[] })),
    );
  }

  // ---------------------------------------------------------------- review state and votes
  private render(): void {
    this.renderHead();
    this.renderTally();
    this.renderVotes();
    this.renderMarkups();
    this.renderPresence();
  }

  private renderHead(): void {
    const r = this.review;
    const rule =
      r.decision_rule === "ALL"
        ? "every reviewer approves"
        : r.decision_rule === "ANY"
          ? "any one reviewer approves"
          : `${r.threshold} of ${r.reviewers.length} approve`;
    replace(
      this.head,
      h("div", { class: "row" }, h("h3", null, "Review"), statusPill(r.status), r.outcome ? statusPill(r.outcome) : null),
      h("p", { class: "muted small", id: "decision-rule" }, `Decision: ${rule}${r.veto ? "; any rejection rejects" : ""}. Started by ${r.created_by_username ?? "—"} ${when(r.created_at)}.`),
      r.notes ? h("p", { class: "notes" }, r.notes) : null,
      this.gatesNote(r),
      h("p", { class: "small" }, h("a", { href: `/api/reviews/${r.id}/bcf/`, download: "" }, "Export markups (BCF 3.0)")),
    );
  }

  /** The review rules this version's deltas tripped, and why; whether approval waits for an ADMIN. */
  private gatesNote(r: Review): HTMLElement | null {
    const gates = r.gates;
    if (!gates || !gates.tripped.length) return null;
    return h(
      "div",
      { class: "gates", id: "review-gates", role: "note" },
      h("p", { class: "strong" }, `Review rules tripped since v${gates.previous_version_number ?? "?"}`),
      h("ul", null, gates.tripped.map((t) => h("li", null, h("span", { class: "strong" }, t.name), ` — ${t.reason}`))),
      gates.awaiting_override ? h("p", { class: "form-error" }, "Approval waits for an ADMIN override.") : null,
      gates.override ? h("p", { class: "muted small" }, `Overridden by ${gates.override.username}: ${gates.override.reason}`) : null,
    );
  }

  private renderTally(): void {
    const t = this.review.tally;
    const segments = h(
      "div",
      { class: "tally-bar", "aria-hidden": "true" },
      Array.from({ length: t.reviewers }, (_, i) =>
        h("span", { class: i < t.approved ? "approve" : i < t.approved + t.rejected ? "reject" : "pending" }),
      ),
    );
    replace(
      this.tally,
      segments,
      h(
        "p",
        { id: "tally-text" },
        h("span", { class: "strong" }, `${t.approved} of ${t.required} approval${t.required === 1 ? "" : "s"}`),
        ` · ${t.rejected} rejected · ${t.pending} pending`,
      ),
    );
  }

  private renderVotes(): void {
    const r = this.review;
    const me = this.app.user?.id ?? -1;
    const rows = (r.votes ?? r.reviewer_details.map((d) => ({ reviewer: d.id, username: d.username, decision: null, comments: null, reason: null, voted_at: null }))).map((v) =>
      h(
        "li",
        { class: `vote ${v.decision ? v.decision.toLowerCase() : "pending"}` },
        h("span", { class: "strong" }, v.username ?? `#${v.reviewer}`),
        h("span", { class: "muted" }, v.decision ? ` ${v.decision === "APPROVE" ? "approved" : "rejected"} ${when(v.voted_at)}` : " has not voted"),
        v.reason ? h("div", { class: "small" }, titleCase(v.reason)) : null,
        v.comments ? h("div", { class: "small" }, v.comments) : null,
      ),
    );
    const mine = r.reviewers.includes(me) && OPEN.includes(r.status);
    let box: HTMLElement | null = mine ? this.voteBox : null;
    if (mine && !box) {
      const comments = h("textarea", { id: "vote-comments", rows: 2, maxlength: 5000, placeholder: "Comments (optional)" });
      const reason = h("select", { id: "vote-reason" }, REASONS.map((x) => h("option", { value: x }, titleCase(x))));
      const error = h("p", { class: "form-error", role: "alert" });
      const approve = h("button", { type: "button", class: "btn approve", id: "vote-approve" }, "Approve");
      const reject = h("button", { type: "button", class: "btn reject", id: "vote-reject" }, "Reject");
      const vote = async (decision: "approve" | "reject") => {
        approve.disabled = reject.disabled = true;
        error.textContent = "";
        try {
          const body = decision === "approve" ? { comments: comments.value } : { comments: comments.value, reason: reason.value };
          const updated = await post<Review>(`/api/reviews/${r.id}/${decision}/`, body);
          approve.disabled = reject.disabled = false;
          this.setReview(updated);
        } catch (err) {
          error.textContent = err instanceof ApiError ? err.detail : "The vote was not recorded.";
          approve.disabled = reject.disabled = false;
        }
      };
      approve.addEventListener("click", () => void vote("approve"));
      reject.addEventListener("click", () => void vote("reject"));
      box = h(
        "div",
        { class: "vote-box" },
        h("label", { for: "vote-comments" }, "Your vote"),
        comments,
        h("div", { class: "field" }, h("label", { for: "vote-reason" }, "Reason if rejecting"), reason),
        error,
        h("div", { class: "row" }, approve, reject),
      );
      this.voteBox = box; // kept across re-renders: what the reviewer typed survives others' votes
    }
    const focused = this.votes.contains(document.activeElement) ? (document.activeElement as HTMLElement) : null;
    replace(this.votes, h("ul", { class: "vote-list" }, rows), box);
    if (focused?.isConnected) focused.focus({ preventScroll: true });
  }

  // ---------------------------------------------------------------- markups
  private ordered(): Markup[] {
    return [...this.markups.values()].sort((a, b) => a.id - b.id);
  }

  private renderPins(): void {
    const numbers = new Map(this.ordered().map((m, i) => [m.id, i + 1]));
    this.viewer?.setPins(
      this.ordered()
        .filter((m) => this.showClosed || m.status === "OPEN")
        .map((m) => ({
          id: m.id,
          number: numbers.get(m.id) ?? 0,
          position: m.position,
          severity: m.severity,
          status: m.status,
          label: m.annotation_text,
          selected: m.id === this.selectedMarkup,
        })),
    );
  }

  private renderMarkups(): void {
    this.renderPins();
    const all = this.ordered();
    const shown = all.filter((m) => this.showClosed || m.status === "OPEN");
    if (shown.length === 0) {
      this.items.clear();
      replace(
        this.list,
        h("li", { class: "empty muted" }, this.canWrite() ? "No markups yet. Use “Add markup”, then click on the model." : "No markups."),
      );
      return;
    }
    this.list.querySelector(":scope > li.empty")?.remove();
    const wanted = new Set(shown.map((m) => m.id));
    for (const [id, item] of this.items) {
      if (!wanted.has(id)) {
        item.el.remove();
        this.items.delete(id);
      }
    }
    let previous: Element | null = null;
    for (const m of shown) {
      const number = all.indexOf(m) + 1;
      const sig = JSON.stringify([
        m.version,
        m.reply_count,
        number,
        m.id === this.selectedMarkup,
        this.openThreads.has(m.id),
        this.replies.get(m.id)?.length ?? -1,
        this.closing?.id === m.id ? this.closing.how : null,
        this.review.status,
      ]);
      let item = this.items.get(m.id);
      if (!item || item.sig !== sig) {
        const focused = item?.el.contains(document.activeElement) ? (document.activeElement as HTMLElement) : null;
        const el = this.markupItem(m, number);
        item?.el.replaceWith(el);
        item = { el, sig };
        this.items.set(m.id, item);
        if (focused?.isConnected) focused.focus({ preventScroll: true });
      }
      const expected: Element | null = previous ? previous.nextElementSibling : this.list.firstElementChild;
      if (expected !== item.el) this.list.insertBefore(item.el, expected);
      previous = item.el;
    }
  }

  private markupItem(m: Markup, number: number): HTMLElement {
    const open = OPEN.includes(this.review.status);
    const part = m.bom_node ? this.hooks.nodeById(m.bom_node)?.part_name : null;
    const actions: (HTMLElement | null)[] = [
      h("button", { type: "button", class: "btn tiny", onclick: () => this.focusMarkup(m.id, true) }, "Go to"),
      h("button", { type: "button", class: "btn tiny", "aria-expanded": String(this.openThreads.has(m.id)), onclick: () => void this.toggleThread(m.id) }, m.reply_count ? `Replies (${m.reply_count})` : "Reply"),
    ];
    if (open && m.status === "OPEN") {
      actions.push(
        h("button", { type: "button", class: "btn tiny", onclick: () => this.askClose(m.id, "resolve") }, "Resolve"),
        h("button", { type: "button", class: "btn tiny ghost", onclick: () => this.askClose(m.id, "dismiss") }, "Dismiss"),
      );
    }
    const item = h(
      "li",
      { class: `markup-item sev-${m.severity.toLowerCase()} st-${m.status.toLowerCase()}${m.id === this.selectedMarkup ? " selected" : ""}`, "data-markup": m.id },
      h(
        "div",
        { class: "markup-top" },
        h("span", { class: `pin-badge sev-${m.severity.toLowerCase()}`, "aria-hidden": "true" }, String(number)),
        h("span", { class: "markup-text" }, m.annotation_text),
      ),
      h(
        "div",
        { class: "markup-meta small muted" },
        `${titleCase(m.severity)} · ${m.author_username ?? "—"} · ${when(m.created_at)}${part ? ` · ${part}` : ""}`,
        m.status !== "OPEN" ? h("span", { class: `status st-${m.status.toLowerCase()}` }, m.status.toLowerCase()) : null,
      ),
      m.carry ? h("p", { class: "small carried" }, carriedText(m.carry)) : null,
      m.resolution_notes ? h("p", { class: "small" }, `Resolution: ${m.resolution_notes}`) : null,
      m.dismiss_reason ? h("p", { class: "small" }, `Dismissed: ${m.dismiss_reason}`) : null,
      h("div", { class: "row actions" }, actions),
    );
    if (this.closing?.id === m.id && open && m.status === "OPEN") item.append(this.closeForm(m, this.closing.how));
    if (this.openThreads.has(m.id)) item.append(this.thread(m, open));
    return item;
  }

  private thread(m: Markup, open: boolean): HTMLElement {
    const replies = this.replies.get(m.id);
    const key = `reply:${m.id}`;
    let form = this.forms.get(key);
    if (!form) {
      const text = h("textarea", { rows: 2, maxlength: 5000, "aria-label": "Reply", placeholder: "Reply…" });
      const send = h("button", { type: "submit", class: "btn small primary" }, "Send");
      const created = h("form", { class: "reply-form" }, text, send);
      created.addEventListener("submit", async (e) => {
        e.preventDefault();
        if (!text.value.trim()) return;
        send.disabled = true;
        try {
          const reply = await post<Reply>(`/api/markups/${m.id}/replies/`, { text: text.value.trim() });
          text.value = "";
          this.addReply(m.id, reply);
        } catch (err) {
          this.app.toast(err instanceof ApiError ? err.detail : "The reply was not sent.", "error");
        }
        send.disabled = false;
      });
      this.forms.set(key, created);
      form = created;
    }
    return h(
      "div",
      { class: "thread" },
      replies === undefined
        ? h("p", { class: "muted small" }, "Loading…")
        : replies.map((r) => h("div", { class: "reply" }, h("span", { class: "strong" }, r.author_username ?? "—"), h("span", { class: "muted small" }, ` ${stamp(r.created_at)}`), h("p", null, r.text))),
      open ? form : null,
    );
  }

  private async toggleThread(id: number): Promise<void> {
    if (this.openThreads.has(id)) {
      this.openThreads.delete(id);
      this.renderMarkups();
      return;
    }
    this.openThreads.add(id);
    this.renderMarkups();
    try {
      const page = await get<{ results: Reply[] }>(`/api/markups/${id}/replies/`);
      const known = this.replies.get(id) ?? [];
      const merged = [...page.results, ...known.filter((r) => !page.results.some((p) => p.id === r.id))];
      this.replies.set(id, merged);
    } catch {
      this.replies.set(id, []);
    }
    this.renderMarkups();
  }

  private askClose(id: number, how: "resolve" | "dismiss"): void {
    this.closing = { id, how };
    this.renderMarkups();
    this.list.querySelector<HTMLTextAreaElement>(`[data-markup="${id}"] .close-form textarea`)?.focus();
  }

  private closeForm(m: Markup, how: "resolve" | "dismiss"): HTMLElement {
    const key = `close:${m.id}:${how}`;
    const kept = this.forms.get(key);
    if (kept) return kept;
    const id = `close-${m.id}`;
    const text = h("textarea", { id, rows: 2, maxlength: 5000, required: how === "dismiss" });
    const confirm = h("button", { type: "submit", class: "btn small primary" }, how === "resolve" ? "Resolve" : "Dismiss");
    const cancel = h("button", { type: "button", class: "btn small" }, "Cancel");
    const form = h(
      "form",
      { class: "close-form" },
      h("label", { for: id }, how === "resolve" ? "Resolution notes (optional)" : "Reason for dismissing"),
      text,
      h("div", { class: "row" }, confirm, cancel),
    );
    this.forms.set(key, form);
    cancel.addEventListener("click", () => {
      this.closing = null;
      this.forms.delete(key);
      this.renderMarkups();
    });
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (how === "dismiss" && !text.value.trim()) return;
      confirm.disabled = true;
      try {
        const body = how === "resolve" ? { resolution_notes: text.value.trim() } : { reason: text.value.trim() };
        const updated = await post<Markup>(`/api/markups/${m.id}/${how}/`, body);
        this.closing = null;
        this.forms.delete(key);
        this.upsert(updated);
      } catch (err) {
        this.app.toast(err instanceof ApiError ? err.detail : "The markup was not changed.", "error");
        confirm.disabled = false;
      }
    });
    return form;
  }

  /** Select a markup; "go to" also restores the camera it was placed from. */
  private focusMarkup(id: number, restoreCamera: boolean): void {
    const m = this.markups.get(id);
    if (!m) return;
    this.selectedMarkup = id;
    this.follow(null);
    if (restoreCamera && m.camera) this.viewer?.setCamera(m.camera, true);
    this.renderMarkups();
    this.list.querySelector<HTMLElement>(`[data-markup="${id}"]`)?.scrollIntoView({ block: "nearest" });
  }
}

/** How a markup carried from the previous version landed on this one. */
function carriedText(c: Carry): string {
  if (c.orphaned) return c.reason === "part_removed" ? "Carried over: orphaned (its part is gone)" : "Carried over: orphaned (nothing near)";
  if (c.moved) return `Carried over: moved ${(c.distance_mm ?? 0).toFixed(2)} mm`;
  return "Carried over: in place";
}
