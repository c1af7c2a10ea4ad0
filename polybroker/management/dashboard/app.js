// The dashboard's shell: login, the API calls, the live feed and the page router.
import {pages} from "./views.js";

const state = {csrf: null, user: null, feed: null, samples: [], listeners: new Set()};
let leave = null; // what the current page does when another is shown
const HISTORY = 300; // seconds of samples kept for the chart (one a second)

export class LoggedOut extends Error {}

// A call of the JSON API as the logged-in administrator (cookie, and the CSRF token
// for changes); a 401 means the session ended.
export async function api(method, path, body) {
  const headers = {};
  if (method !== "GET") headers["x-csrf-token"] = state.csrf;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) {
    showLogin("Your session has ended: log in again.");
    throw new LoggedOut();
  }
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

// Build an element: h("td", {class: "num"}, "3"); text is never parsed as HTML.
export function h(name, attrs = {}, ...children) {
  const node = document.createElement(name);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else if (value !== false && value !== null && value !== undefined) {
      node.setAttribute(key, value);
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

export function notice(text, error = false) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.className = error ? "error" : "";
  box.hidden = false;
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => { box.hidden = true; }, 5000);
}

export function confirmAction(text, button) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = button;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), {once: true});
  });
}

// The overview samples so far ([{t, overview}], oldest first) and a way to hear of the next.
export const feed = {
  samples: () => state.samples,
  subscribe(listener) {
    state.listeners.add(listener);
    return () => state.listeners.delete(listener);
  },
};

function openFeed() {
  closeFeed();
  const source = new EventSource("/api/v1/feed");
  source.addEventListener("overview", (event) => {
    state.samples.push({t: Date.now() / 1000, overview: JSON.parse(event.data)});
    while (state.samples.length > HISTORY) state.samples.shift();
    for (const listener of state.listeners) listener();
  });
  source.addEventListener("expired", () => {
    closeFeed();
    showLogin("Your session has ended after a time without activity: log in again.");
  });
  source.addEventListener("error", async () => {
    // Closed for good (a refusal, say after a broker restart): is the login still valid?
    if (source.readyState !== EventSource.CLOSED || state.feed !== source) return;
    const session = await fetch("/dashboard/session");
    if (session.status === 401) showLogin("Your session has ended: log in again.");
  });
  state.feed = source;
}

function closeFeed() {
  if (state.feed) state.feed.close();
  state.feed = null;
}

function showLogin(message) {
  closeFeed();
  if (leave) leave(); // the page's timers stop
  leave = null;
  state.csrf = null;
  state.listeners.clear();
  document.getElementById("top").hidden = true;
  document.getElementById("page").hidden = true;
  document.getElementById("page").replaceChildren();
  document.getElementById("login-view").hidden = false;
  document.getElementById("login-message").textContent = message;
}

function started(session) {
  state.csrf = session.csrf;
  state.user = session.user;
  document.getElementById("user").textContent = session.user;
  document.getElementById("login-view").hidden = true;
  document.getElementById("top").hidden = false;
  document.getElementById("page").hidden = false;
  openFeed();
  route();
}

async function route() {
  if (state.csrf === null) return;
  const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const page = pages[name] ? name : "overview";
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.page === page);
  }
  if (leave) leave();
  state.listeners.clear();
  const main = document.getElementById("page");
  main.replaceChildren();
  try {
    leave = await pages[page](main, rest.map(decodeURIComponent));
  } catch (error) {
    if (!(error instanceof LoggedOut)) notice(error.message, true);
  }
}

async function login(event) {
  event.preventDefault();
  const form = event.target;
  const response = await fetch("/dashboard/login", {
    method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify({user: form.user.value, password: form.password.value}),
  });
  form.password.value = "";
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    document.getElementById("login-message").textContent = data.error || "Login refused.";
    return;
  }
  started(data);
}

async function logout() {
  await fetch("/dashboard/logout", {method: "POST", headers: {"x-csrf-token": state.csrf}});
  showLogin("Logged out.");
}

async function start() {
  document.getElementById("login").addEventListener("submit", login);
  document.getElementById("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  const response = await fetch("/dashboard/session");
  if (response.ok) started(await response.json());
  else showLogin("Log in as an administrator.");
}

start();
