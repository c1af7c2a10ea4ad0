// The pages: each renders into `main` and returns what to do when it is left.
import {api, confirmAction, feed, h, LoggedOut, notice} from "./app.js";
import {formatNumber, lineChart} from "./chart.js";

const CHART_SPAN = 300; // seconds
const PAGE_SIZE = 20;
const enc = encodeURIComponent;

function table(headings, rows, empty) {
  if (!rows.length) return h("p", {class: "muted empty"}, empty);
  return h("div", {class: "scroll"}, h("table", {},
    h("thead", {}, h("tr", {}, headings.map((text) => h("th", {}, text)))),
    h("tbody", {}, rows)));
}

const cell = (value, cls) => h("td", {class: cls}, value);
const num = (value) => cell(formatNumber(value), "num");

function bytes(value) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

function duration(seconds) {
  const d = Math.floor(seconds / 86400), hrs = Math.floor(seconds / 3600) % 24;
  const m = Math.floor(seconds / 60) % 60, s = Math.floor(seconds % 60);
  if (d) return `${d}d ${hrs}h ${m}m`;
  if (hrs) return `${hrs}h ${m}m`;
  return m ? `${m}m ${s}s` : `${s}s`;
}

const when = (epoch) => new Date(epoch * 1000).toLocaleString();

function stat(label, value, id) {
  return h("div", {class: "stat"}, h("span", {class: "label"}, label),
           h("span", {class: "value", id}, value));
}

// Messages per second from two overview samples.
function rates(samples) {
  const points = {in: [], out: []};
  for (let i = 1; i < samples.length; i += 1) {
    const a = samples[i - 1], b = samples[i];
    const dt = Math.max(b.overview.uptime - a.overview.uptime, 0.001);
    points.in.push([b.t, Math.max(0, b.overview.messages_in - a.overview.messages_in) / dt]);
    points.out.push([b.t, Math.max(0, b.overview.messages_out - a.overview.messages_out) / dt]);
  }
  return points;
}

function countsTable(heading, counts, empty) {
  const rows = Object.entries(counts).map(([name, count]) => h("tr", {}, cell(name), num(count)));
  return table([heading, "count"], rows, empty);
}

// -- Overview ----------------------------------------------------------------------------

async function overview(main) {
  const live = h("div");
  const listeners = h("section", {class: "card"}, h("h2", {}, "Listeners"));
  main.append(h("h1", {}, "Overview"), live, listeners);
  const draw = () => {
    const samples = feed.samples();
    if (!samples.length) { live.replaceChildren(h("p", {class: "muted"}, "Waiting for data…")); return; }
    const o = samples[samples.length - 1].overview;
    const points = rates(samples);
    const last = (list) => (list.length ? list[list.length - 1][1] : 0);
    live.replaceChildren(
      h("section", {class: "stats"},
        stat("Messages in /s", formatNumber(last(points.in)), "rate-in"),
        stat("Messages out /s", formatNumber(last(points.out)), "rate-out"),
        stat("Connections", o.connections, "connections"),
        stat("Retained", o.retained_messages, "retained"),
        stat("Store", bytes(o.store_bytes), "store"),
        stat("Uptime", duration(o.uptime), "uptime"),
        stat("Version", o.version, "version")),
      h("section", {class: "card"},
        h("h2", {}, "Messages per second"),
        h("p", {class: "legend"}, h("span", {class: "key in"}, "in"), " ",
          h("span", {class: "key out"}, "out")),
        lineChart([{name: "in", cls: "in", points: points.in},
                   {name: "out", cls: "out", points: points.out}],
                  CHART_SPAN, samples[samples.length - 1].t,
                  Math.max(260, main.clientWidth - 36))),
      h("div", {class: "columns"},
        h("section", {class: "card", id: "by-protocol"}, h("h2", {}, "Connections by protocol"),
          countsTable("protocol", o.connections_by_protocol, "None.")),
        h("section", {class: "card", id: "by-transport"}, h("h2", {}, "Connections by transport"),
          countsTable("transport", o.connections_by_transport, "No connections.")),
        h("section", {class: "card", id: "drops"}, h("h2", {}, "Dropped messages"),
          countsTable("reason", o.dropped, "None dropped.")),
        h("section", {class: "card"}, h("h2", {}, "Totals"),
          countsTable("", {sessions: o.sessions, subscriptions: o.subscriptions,
                           queues: o.queues, "messages in": o.messages_in,
                           "messages out": o.messages_out}, ""))));
  };
  draw();
  feed.subscribe(draw);
  window.addEventListener("resize", draw);
  const bound = await api("GET", "/api/v1/listeners");
  listeners.append(table(["url", "protocol", "transport", "port", "TLS", "connections"],
    bound.map((l) => h("tr", {}, cell(l.url), cell(l.protocol), cell(l.transport),
                       cell(l.port, "num"), cell(l.tls ? "yes" : "no"), num(l.connections))),
    "No listeners."));
  return () => window.removeEventListener("resize", draw);
}

// -- Clients -----------------------------------------------------------------------------

async function clients(main, [id]) {
  if (id !== undefined) return client(main, id);
  let offset = 0;
  const search = h("input", {type: "search", id: "client-search", placeholder: "client id contains…",
                             "aria-label": "search by client id"});
  const protocol = h("select", {id: "client-protocol", "aria-label": "protocol"},
    ["", "mqtt", "stomp", "amqp"].map((p) => h("option", {value: p}, p || "any protocol")));
  const list = h("div", {id: "client-list"});
  const pager = h("div", {class: "pager"});
  main.append(h("h1", {}, "Clients"),
              h("form", {class: "filters", onsubmit: (e) => { e.preventDefault(); offset = 0; load(); }},
                search, protocol, h("button", {type: "submit"}, "Search")),
              list, pager);
  protocol.addEventListener("change", () => { offset = 0; load(); });
  async function load() {
    const params = new URLSearchParams({offset, limit: PAGE_SIZE, search: search.value,
                                        protocol: protocol.value});
    let page;
    try { page = await api("GET", `/api/v1/clients?${params}`); } catch (e) {
      if (!(e instanceof LoggedOut)) notice(e.message, true);
      return;
    }
    list.replaceChildren(table(
      ["client id", "protocol", "peer", "user", "connected since", "subs", "queued / in-flight"],
      page.items.map((c) => h("tr", {"data-client": c.id},
        h("td", {}, h("a", {href: `#/clients/${enc(c.id)}`}, c.id)), cell(c.protocol),
        cell(c.peer), cell(c.user ?? "—"), cell(when(c.connected_since)),
        num(c.subscription_count), cell(`${c.queued} / ${c.inflight}`, "num"))),
      "No clients match."));
    const end = Math.min(page.offset + page.items.length, page.total);
    pager.replaceChildren(
      h("button", {type: "button", disabled: offset === 0,
                   onclick: () => { offset = Math.max(0, offset - PAGE_SIZE); load(); }}, "‹ Previous"),
      h("span", {id: "client-count"}, page.total ? `${page.offset + 1}–${end} of ${page.total}` : "0"),
      h("button", {type: "button", disabled: end >= page.total,
                   onclick: () => { offset += PAGE_SIZE; load(); }}, "Next ›"));
  }
  await load();
  const timer = setInterval(load, 2000);
  return () => clearInterval(timer);
}

async function client(main, id) {
  const c = await api("GET", `/api/v1/clients/${enc(id)}`);
  const discard = h("input", {type: "checkbox", id: "discard"});
  const kick = async () => {
    const also = discard.checked ? " and discard its session" : "";
    if (!await confirmAction(`Disconnect ${id}${also}?`, "Disconnect")) return;
    try {
      await api("DELETE", `/api/v1/clients/${enc(id)}?discard=${discard.checked}`);
      notice(`Disconnected ${id}.`);
      location.hash = "#/clients";
    } catch (e) {
      if (!(e instanceof LoggedOut)) notice(e.message, true);
    }
  };
  const counters = {protocol: c.protocol, transport: c.transport, listener: c.listener,
                    peer: c.peer, user: c.user ?? "—",
                    "connected since": c.connected ? when(c.connected_since) : "not connected",
                    "messages in": c.messages_in, "messages out": c.messages_out,
                    "bytes in": c.bytes_in, "bytes out": c.bytes_out, queued: c.queued,
                    "in flight": c.inflight};
  const subs = c.subscriptions || [];
  main.append(
    h("p", {}, h("a", {href: "#/clients"}, "‹ Clients")),
    h("h1", {id: "client-id"}, id),
    h("section", {class: "card"}, h("h2", {}, "Details"),
      h("dl", {class: "details"}, Object.entries(counters)
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) => [h("dt", {}, k), h("dd", {}, typeof v === "number" ? formatNumber(v) : v)]))),
    h("section", {class: "card"}, h("h2", {}, `Subscriptions (${subs.length})`),
      table(["filter / destination", "qos / queue"],
            subs.map((s) => h("tr", {}, cell(s.filter ?? s.destination ?? s.id),
                                 cell(s.qos ?? s.queue))), "No subscriptions.")),
    h("section", {class: "card actions"},
      h("label", {}, discard, " also discard its session"),
      h("button", {type: "button", class: "danger", id: "disconnect", onclick: kick}, "Disconnect…")));
}

// -- Queues ------------------------------------------------------------------------------

async function queues(main) {
  const list = h("div", {id: "queue-list"});
  main.append(h("h1", {}, "Queues"), list);
  let previous = new Map();
  async function load() {
    let page;
    try { page = await api("GET", "/api/v1/queues?limit=1000"); } catch (e) {
      if (!(e instanceof LoggedOut)) notice(e.message, true);
      return;
    }
    const now = Date.now() / 1000;
    const rows = page.items.map((q) => {
      const before = previous.get(q.name);
      const rate = before ? (q.ready - before.ready) / Math.max(now - before.t, 0.001) : 0;
      return h("tr", {"data-queue": q.name}, cell(q.name), num(q.ready), num(q.unacknowledged),
        num(q.consumers), cell(`${rate > 0 ? "+" : ""}${rate.toFixed(1)}`, "num"),
        cell(bytes(q.bytes), "num"),
        h("td", {class: "row-actions"},
          h("button", {type: "button", class: "purge", onclick: () => change(q.name, "purge")}, "Purge"),
          h("button", {type: "button", class: "danger delete", onclick: () => change(q.name, "delete")}, "Delete")));
    });
    previous = new Map(page.items.map((q) => [q.name, {ready: q.ready, t: now}]));
    list.replaceChildren(table(["queue", "ready", "unacked", "consumers", "ready /s", "bytes", ""],
                               rows, "No named queues."));
  }
  async function change(name, what) {
    const text = what === "purge" ? `Purge the ready messages of ${name}?`
      : `Delete the queue ${name} with its messages?`;
    if (!await confirmAction(text, what === "purge" ? "Purge" : "Delete")) return;
    try {
      const path = `/api/v1/queues/${enc(name)}${what === "purge" ? "/messages" : ""}`;
      const done = await api("DELETE", path);
      notice(what === "purge" ? `Purged ${done.purged} messages from ${name}.` : `Deleted ${name}.`);
    } catch (e) {
      if (!(e instanceof LoggedOut)) notice(e.message, true);
    }
    await load();
  }
  await load();
  const timer = setInterval(load, 1000);
  return () => clearInterval(timer);
}

// -- Topics ------------------------------------------------------------------------------

// Whether some topic matches both MQTT filters (so a subscription sees what a filter names).
export function overlaps(a, b) {
  const x = a.split("/"), y = b.split("/");
  for (let i = 0; i < Math.max(x.length, y.length); i += 1) {
    if (x[i] === "#" || y[i] === "#") return true;
    if (x[i] === undefined || y[i] === undefined) return false;
    if (x[i] !== "+" && y[i] !== "+" && x[i] !== y[i]) return false;
  }
  return true;
}

async function topics(main) {
  const filter = h("input", {id: "topic-filter", value: "#", "aria-label": "topic filter"});
  const results = h("div", {id: "topic-results"});
  const topic = h("input", {name: "topic", required: true, placeholder: "topic", id: "publish-topic"});
  const payload = h("input", {name: "payload", placeholder: "payload", id: "publish-payload"});
  const qos = h("select", {name: "qos", "aria-label": "QoS"}, [0, 1, 2].map((n) => h("option", {value: n}, `QoS ${n}`)));
  const retain = h("input", {type: "checkbox", name: "retain"});
  const publish = async (event) => {
    event.preventDefault();
    try {
      const done = await api("POST", "/api/v1/publish", {topic: topic.value, payload: payload.value,
                                                         qos: Number(qos.value), retain: retain.checked});
      notice(`Published to ${done.topic}: ${done.matched} subscriber(s).`);
      await load();
    } catch (e) {
      if (!(e instanceof LoggedOut)) notice(e.message, true);
    }
  };
  main.append(h("h1", {}, "Topics"),
    h("form", {class: "filters", onsubmit: (e) => { e.preventDefault(); load(); }},
      filter, h("button", {type: "submit"}, "Show")),
    results,
    h("section", {class: "card"}, h("h2", {}, "Publish a test message"),
      h("form", {class: "filters", id: "publish", onsubmit: publish}, topic, payload, qos,
        h("label", {}, retain, " retain"), h("button", {type: "submit"}, "Publish"))));
  async function load() {
    const wanted = filter.value || "#";
    const [subs, retained] = await Promise.all([
      api("GET", "/api/v1/subscriptions?limit=1000"),
      api("GET", `/api/v1/retained?filter=${enc(wanted)}&limit=100`)]);
    const byFilter = new Map();
    for (const s of subs.items) {
      const name = s.filter ?? s.destination ?? s.queue;
      if (s.filter !== undefined && !overlaps(name, wanted)) continue;
      if (!byFilter.has(name)) byFilter.set(name, []);
      byFilter.get(name).push(s.client);
    }
    results.replaceChildren(
      h("section", {class: "card", id: "subscriptions"}, h("h2", {}, "Subscriptions"),
        table(["filter / destination", "subscribers", "clients"],
          [...byFilter].sort().map(([name, ids]) => h("tr", {}, cell(name), num(ids.length),
                                                      cell(ids.slice(0, 5).join(", ")))),
          "No subscriptions match.")),
      h("section", {class: "card", id: "retained"}, h("h2", {}, `Retained messages (${retained.total})`),
        table(["topic", "size", "qos"],
          retained.items.map((m) => h("tr", {}, cell(m.topic), cell(bytes(m.size), "num"), num(m.qos))),
          "No retained messages match.")));
  }
  await load();
}

export const pages = {overview, clients, queues, topics};
