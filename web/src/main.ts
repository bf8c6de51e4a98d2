// Entry point: restore the session, then route on the URL fragment (#/designs, #/designs/<id>, #/jobs).
import { get, onUnauthenticated, type User } from "./api";
import { App, type View } from "./app";
import { designView } from "./views/design";
import { designsView } from "./views/designs";
import { jobsView } from "./views/jobs";
import { loginView } from "./views/login";
import "./styles.css";

const app = new App();
let view: View | null = null;

function route(): void {
  view?.dispose();
  view = null;
  app.setClassification(null);
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  if (!app.user) {
    app.renderHeader();
    view = loginView(app, () => {
      location.hash = sessionStorage.getItem("enginel.after-login") ?? "#/designs";
      sessionStorage.removeItem("enginel.after-login");
      route();
    });
    return;
  }
  app.renderHeader();
  if (parts[0] === "designs" && parts[1]) {
    const tab = parts[2];
    view = designView(app, parts[1], tab === "review" || tab === "bom" || tab === "versions" || tab === "details" ? tab : null);
  } else if (parts[0] === "jobs") {
    view = jobsView(app);
  } else {
    if (parts[0] !== "designs") history.replaceState(null, "", "#/designs");
    view = designsView(app);
  }
  document.title = `${view.title} · Enginel`;
  app.main.focus({ preventScroll: true });
}

async function boot(): Promise<void> {
  // The skip link moves focus; following it as a link would change the route.
  document.querySelector(".skip")?.addEventListener("click", (e) => {
    e.preventDefault();
    app.main.focus();
  });
  onUnauthenticated(() => {
    if (app.user) app.signedOut("Your session ended. Sign in again.");
  });
  try {
    const verified = await get<{ user: User }>("/api/auth/verify/");
    await app.signIn(verified.user);
  } catch {
    if (location.hash && !location.hash.startsWith("#/login")) sessionStorage.setItem("enginel.after-login", location.hash);
  }
  window.addEventListener("hashchange", route);
  route();
}

void boot();
