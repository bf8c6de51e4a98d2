// Sign in with a username (or email) and password; the server sets the session cookie.
import { ApiError, post, type User } from "../api";
import type { App, View } from "../app";
import { h } from "../dom";

export function loginView(app: App, done: () => void): View {
  const notice = sessionStorage.getItem("enginel.notice");
  sessionStorage.removeItem("enginel.notice");
  const error = h("p", { class: "form-error", role: "alert", id: "login-error" });
  const username = h("input", { id: "username", name: "username", autocomplete: "username", required: true });
  const password = h("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const submit = h("button", { type: "submit", class: "btn primary wide" }, "Sign in");
  const form = h(
    "form",
    { class: "login-card", "aria-labelledby": "login-title" },
    h("div", { class: "brand login-brand" }, h("span", { class: "brand-mark", "aria-hidden": "true" }), "Enginel"),
    h("h1", { id: "login-title" }, "Sign in"),
    h("p", { class: "muted" }, "CAD design review, analysis and approvals."),
    notice ? h("p", { class: "notice", role: "status" }, notice) : null,
    h("label", { for: "username" }, "Username or email"),
    username,
    h("label", { for: "password" }, "Password"),
    password,
    error,
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    submit.disabled = true;
    try {
      const answer = await post<{ user: User; xsrf_token: string }>("/api/auth/login/", {
        username: username.value.trim(),
        password: password.value,
      });
      await app.signIn(answer.user, answer.xsrf_token);
      done();
    } catch (err) {
      error.textContent =
        err instanceof ApiError && err.status === 401
          ? "Wrong username or password, or the account is locked."
          : err instanceof ApiError
            ? err.detail
            : "Sign-in failed.";
      submit.disabled = false;
      password.select();
    }
  });
  const page = h("div", { class: "login-page" }, form);
  app.main.append(page);
  username.focus();
  return { title: "Sign in", dispose: () => page.remove() };
}
