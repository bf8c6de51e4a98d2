// The application shell: who is signed in, the organization in view, the socket, banners, toasts, navigation.
import { get, post, setXsrf, type Organization, type User } from "./api";
import { banner } from "./classification";
import { h, replace } from "./dom";
import { Realtime, type ConnectionState } from "./realtime";

export interface View {
  title: string;
  classification?: string[];
  dispose(): void;
}

export class App {
  user: User | null = null;
  orgs: Organization[] = [];
  org: Organization | null = null;
  realtime: Realtime | null = null;
  private orgListeners = new Set<() => void>();
  private offState: (() => void) | null = null;

  readonly main = document.getElementById("main") as HTMLElement;
  private readonly top = document.getElementById("banner-top") as HTMLElement;
  private readonly bottom = document.getElementById("banner-bottom") as HTMLElement;
  private readonly toasts = document.getElementById("toasts") as HTMLElement;
  private readonly header = document.getElementById("topbar") as HTMLElement;

  async signIn(user: User, xsrf?: string): Promise<void> {
    if (xsrf) setXsrf(xsrf);
    this.user = user;
    const page = await get<{ results: Organization[] }>("/api/organizations/?page_size=100");
    this.orgs = page.results;
    const remembered = sessionStorage.getItem("enginel.org");
    this.org = this.orgs.find((o) => o.id === remembered) ?? this.orgs[0] ?? null;
    this.realtime?.stop();
    this.realtime = new Realtime(() => this.signedOut("Your session ended. Sign in again."));
    this.realtime.start();
    this.renderHeader();
  }

  async signOut(): Promise<void> {
    try {
      await post("/api/auth/logout/");
    } catch {
      // the session may already be gone; the page forgets it either way
    }
    this.signedOut("Signed out.");
  }

  /** Drop everything held for the user: the socket, the organization, and (by reloading) every model in memory. */
  signedOut(message: string): void {
    this.realtime?.stop();
    this.realtime = null;
    this.user = null;
    sessionStorage.clear();
    sessionStorage.setItem("enginel.notice", message);
    location.hash = "#/login";
    location.reload();
  }

  selectOrg(id: string): void {
    this.org = this.orgs.find((o) => o.id === id) ?? this.org;
    if (this.org) sessionStorage.setItem("enginel.org", this.org.id);
    this.orgListeners.forEach((fn) => fn());
  }

  onOrgChange(fn: () => void): () => void {
    this.orgListeners.add(fn);
    return () => this.orgListeners.delete(fn);
  }

  setClassification(levels: string[] | null): void {
    const mark = levels ? banner(levels) : null;
    for (const el of [this.top, this.bottom]) {
      el.hidden = mark === null;
      el.className = `banner ${mark?.cls ?? ""}`;
      el.textContent = mark?.text ?? "";
    }
  }

  toast(message: string, kind: "info" | "error" | "success" = "info"): void {
    const el = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
    this.toasts.append(el);
    window.setTimeout(() => el.remove(), kind === "error" ? 8000 : 4000);
  }

  renderHeader(): void {
    if (!this.user) {
      this.header.hidden = true;
      return;
    }
    this.header.hidden = false;
    const route = location.hash.split("/")[1] ?? "designs";
    const link = (href: string, text: string, key: string) =>
      h("a", { href, class: route === key ? "active" : "", "aria-current": route === key ? "page" : null }, text);
    const select = h(
      "select",
      { id: "org-select", "aria-label": "Organization", onchange: (e: Event) => this.selectOrg((e.target as HTMLSelectElement).value) },
      this.orgs.map((o) => h("option", { value: o.id, selected: o.id === this.org?.id }, o.name)),
    );
    const connection = h("span", { class: "connection", role: "status", "aria-live": "polite" });
    this.offState?.();
    this.offState = this.realtime?.onState((state: ConnectionState) => {
      connection.className = `connection ${state}`;
      connection.textContent = { online: "Live", connecting: "Connecting…", reconnecting: "Reconnecting…", offline: "Offline" }[state];
    }) ?? null;
    replace(
      this.header,
      h("a", { class: "brand", href: "#/designs", "aria-label": "Enginel home" }, h("span", { class: "brand-mark", "aria-hidden": "true" }), "Enginel"),
      h("nav", { class: "nav", "aria-label": "Main" }, link("#/designs", "Designs", "designs"), link("#/jobs", "Jobs", "jobs")),
      h("div", { class: "topbar-right" },
        this.orgs.length ? select : h("span", { class: "muted" }, "No organization"),
        connection,
        h("span", { class: "user", title: `Clearance ${this.user.security_clearance_level}${this.user.is_us_person ? ", US person" : ""}` }, this.user.username),
        h("button", { type: "button", class: "btn ghost", onclick: () => void this.signOut() }, "Sign out"),
      ),
    );
  }
}
