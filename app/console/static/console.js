// ctmm-bridge operator console. Plain JavaScript, no framework, no build step.
//
// Safety rule of this file: every value from the bridge (payloads come from outside) reaches
// the page as text: elements are built with createElement and filled with text nodes; no
// string is ever parsed as markup or code (tests/console/test_page.py lists the APIs it bans).
// Links are only ever built from "#/..." routes with encoded parts.
"use strict";

(function () {
  const TOKEN_KEY = "ctmm-bridge.admin-token";
  const STATES = ["pending", "delivered", "failed", "dead", "parked", "dropped", "cancelled"];
  const UPSTREAMS = ["mailmodo", "clevertap", "mailmojo"];
  const DIRECTIONS = {
    clevertap_to_mailmodo: "CleverTap → Mailmodo",
    mailmodo_to_clevertap: "Mailmodo → CleverTap",
    clevertap_to_mailmojo: "CleverTap → Mailmojo",
  };
  const OPERATIONS = ["campaign.trigger", "journey.start", "journey.abort", "list.sync", "event.upload",
    "mailmojo.list.sync", "contact.status", "contact.unsubscribe", "contact.resubscribe",
    "consent.profile", "consent.subscribe"];
  const SINCE = [["", "any time"], ["15m", "last 15 minutes"], ["1h", "last hour"], ["2h", "last 2 hours"],
    ["24h", "last 24 hours"], ["7d", "last 7 days"]];
  const PAGE = 50;
  const SVG = "http://www.w3.org/2000/svg";

  const view = document.getElementById("view");
  const statusLine = document.getElementById("status");
  let refreshTimer = null;

  // -- building the page, text only ----------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "on") {
        for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
      } else if (key === "href" && !String(value).startsWith("#/")) {
        throw new Error("only #/ routes are linked");
      } else {
        el.setAttribute(key, value === true ? "" : String(value));
      }
    }
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
    append(el, children);
    return el;
  }

  function link(route, params, ...children) {
    return h("a", { href: routeHref(route, params) }, ...children);
  }

  function routeHref(route, params) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params || {})) {
      for (const v of [].concat(value)) if (v !== null && v !== undefined && v !== "") query.append(key, v);
    }
    const text = query.toString();
    return "#/" + route + (text ? "?" + text : "");
  }

  function say(text, isError) {
    statusLine.textContent = text;
    statusLine.classList.toggle("error", Boolean(isError));
  }

  function stateBadge(state) {
    // The word is the information; the colour only repeats it.
    return h("span", { class: "state state-" + state }, state);
  }

  function pre(value) {
    let text = value;
    if (typeof value === "string") {
      try { text = JSON.stringify(JSON.parse(value), null, 2); } catch (_) { text = value; }
    } else {
      text = JSON.stringify(value, null, 2);
    }
    return h("pre", { class: "code", tabindex: "0" }, text === undefined ? "" : text);
  }

  // What the bridge told one side and that still stands; cleared (value gone, time kept) when
  // Mailmodo has the person subscribed again or an opt-in was carried.
  function told(side, value, at) {
    if (value) return h("li", {}, "Told " + side + ": " + value, at ? [" on ", when(at)] : "");
    return h("li", {}, "Told " + side + ": " + (at ? "no opt-out standing since " : "nothing"),
      at ? when(at) : "");
  }

  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    return h("time", { datetime: iso, title: d.toISOString() },
      d.toLocaleString([], { dateStyle: "medium", timeStyle: "medium" }));
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "none";
    const s = Math.round(seconds);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  function plural(n, one, many) {
    return n + " " + (n === 1 ? one : many);
  }

  function durationMs(text) {
    const m = /^(\d+)([mhd])$/.exec(text || "");
    if (!m) return null;
    return Number(m[1]) * { m: 60e3, h: 3600e3, d: 86400e3 }[m[2]];
  }

  // -- the admin API -------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super(describe(status, body));
      this.status = status;
    }
  }

  function describe(status, body) {
    if (!body) return "HTTP " + status;
    let detail = body.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => (d.loc || []).join(".") + ": " + d.msg).join("; ");
    else if (detail && typeof detail === "object") detail = JSON.stringify(detail);
    return (body.error || "HTTP " + status) + (detail ? " — " + detail : "");
  }

  async function api(method, path, params, body, token) {
    const url = new URL("admin/" + path, window.location.href);
    for (const [key, value] of Object.entries(params || {})) {
      for (const v of [].concat(value)) if (v !== null && v !== undefined && v !== "") url.searchParams.append(key, v);
    }
    const headers = { Authorization: "Bearer " + (token || sessionStorage.getItem(TOKEN_KEY) || ""), Accept: "application/json" };
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(url, init);
    } catch (err) {
      throw new ApiError(0, { error: "cannot reach the bridge", detail: String(err.message || err) });
    }
    let data = null;
    try { data = await resp.json(); } catch (_) { data = null; }
    if (!resp.ok) {
      if (resp.status === 401 && !token) signOut("The bridge no longer accepts the token in this tab (HTTP 401). Sign in again.");
      throw new ApiError(resp.status, data);
    }
    return data;
  }

  // -- sign in -------------------------------------------------------------------------------

  const signin = document.getElementById("signin");
  const signinError = document.getElementById("signin-error");
  const nav = document.getElementById("nav");
  const signoutButton = document.getElementById("signout");

  function showSignIn(message) {
    stopRefresh();
    view.replaceChildren();
    nav.hidden = true;
    signoutButton.hidden = true;
    signin.hidden = false;
    signinError.hidden = !message;
    signinError.textContent = message || "";
    document.getElementById("token").focus();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn(message);
  }

  document.getElementById("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = document.getElementById("token").value.trim();
    if (!token) {
      signinError.textContent = "Paste the admin token first.";
      signinError.hidden = false;
      return;
    }
    try {
      await api("GET", "overview", null, undefined, token);
    } catch (err) {
      signinError.textContent = err.status === 401
        ? "That token was refused (HTTP 401). Use the value of BRIDGE_ADMIN_TOKEN, or run `ctmm-bridge credentials` to see a generated one."
        : "Could not sign in: " + err.message;
      signinError.hidden = false;
      document.getElementById("token").select();
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    document.getElementById("token").value = "";
    signin.hidden = true;
    route();
  });

  signoutButton.addEventListener("click", () => signOut("Signed out. The token was removed from this tab."));

  // -- routing -------------------------------------------------------------------------------

  const SCREENS = {
    overview: overviewScreen,
    failures: failuresScreen,
    deliveries: deliveriesScreen,
    delivery: deliveryScreen,
    replay: replayScreen,
    rejected: rejectedScreen,
    person: personScreen,
  };

  function parseHash() {
    const hash = window.location.hash.replace(/^#\/?/, "");
    const [path, query] = hash.split("?");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    return { name: parts[0] || "overview", arg: parts[1], params: new URLSearchParams(query || "") };
  }

  let refreshing = false;

  async function route(refresh) {
    refreshing = refresh === true;
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      showSignIn("");
      return;
    }
    stopRefresh();
    signin.hidden = true;
    nav.hidden = false;
    signoutButton.hidden = false;
    const { name, arg, params } = parseHash();
    const screen = SCREENS[name] || overviewScreen;
    for (const a of nav.querySelectorAll("a")) {
      const current = a.getAttribute("href") === "#/" + (name === "delivery" ? "deliveries" : name);
      if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    }
    say("");
    try {
      await screen(arg, params);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      view.replaceChildren(h("h1", { tabindex: "-1" }, "Something went wrong"), h("p", { class: "error", role: "alert" }, err.message));
    }
    const title = view.querySelector("h1");
    if (title && document.activeElement === document.body && !refreshing) title.focus();
  }

  function render(titleText, ...children) {
    const title = h("h1", { tabindex: "-1" }, titleText);
    view.replaceChildren(title);
    append(view, children);
    document.title = titleText + " · ctmm-bridge console";
    if (!refreshing) title.focus();
  }

  function stopRefresh() {
    if (refreshTimer) clearInterval(refreshTimer);
    refreshTimer = null;
  }

  // -- form helpers --------------------------------------------------------------------------

  let fieldCount = 0;

  function field(labelText, control, hint) {
    const id = control.id || "f" + (++fieldCount);
    control.id = id;
    return h("div", { class: "field" }, h("label", { for: id }, labelText), control, hint ? h("small", {}, hint) : null);
  }

  function select(name, options, value) {
    return h("select", { name },
      options.map(([v, text]) => h("option", { value: v, selected: v === (value || "") }, text)));
  }

  function input(name, value, attrs) {
    return h("input", Object.assign({ name, value: value || "", type: "text" }, attrs || {}));
  }

  function checkboxes(legend, name, values, chosen) {
    return h("fieldset", { class: "checks" }, h("legend", {}, legend),
      values.map((v) => {
        const id = "f" + (++fieldCount);
        return h("span", { class: "check" },
          h("input", { type: "checkbox", id, name, value: v, checked: chosen.includes(v) }),
          h("label", { for: id }, v));
      }));
  }

  function formValues(form) {
    const out = {};
    for (const [key, value] of new FormData(form).entries()) {
      if (value === "") continue;
      if (key in out) out[key] = [].concat(out[key], value); else out[key] = value;
    }
    return out;
  }

  function localToIso(value) {
    // <input type="datetime-local"> gives local time without a zone.
    if (!value) return null;
    const d = new Date(value);
    return isNaN(d) ? null : d.toISOString();
  }

  function isoToLocal(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (isNaN(d)) return "";
    const pad = (n) => String(n).padStart(2, "0");
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + "T" + pad(d.getHours()) + ":" + pad(d.getMinutes());
  }

  function table(caption, columns, rows, empty) {
    if (!rows.length) return h("p", { class: "empty" }, empty);
    return h("div", { class: "table-wrap" }, h("table", { class: "list" },
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, columns.map(([label]) => h("th", { scope: "col" }, label)))),
      h("tbody", {}, rows.map((row) => h("tr", {},
        columns.map(([label, cell]) => h("td", { "data-label": label }, cell(row))))))));
  }

  function pager(screen, params, nextCursor) {
    const hasCursor = params.get("cursor");
    if (!hasCursor && !nextCursor) return null;
    const rest = {};
    for (const [k, v] of params.entries()) if (k !== "cursor") rest[k] = [].concat(rest[k] || [], v);
    return h("nav", { class: "pager", "aria-label": "Pages" },
      hasCursor ? link(screen, rest, "Newest page") : null,
      nextCursor ? link(screen, Object.assign({}, rest, { cursor: nextCursor }), "Older page →") : h("span", {}, "Last page"));
  }

  function button(text, onClick, cls) {
    return h("button", { type: "button", class: cls || null, on: { click: onClick } }, text);
  }

  // -- Overview ------------------------------------------------------------------------------

  async function overviewScreen() {
    const data = await api("GET", "overview");
    render("Overview",
      h("p", { class: "meta" }, "As of ", when(data.generated_at), " (counts ",
        age(data.counts_age_seconds), " old). Refreshes every 15 seconds. ",
        button("Refresh now", () => route(true), "secondary")),
      h("div", { class: "lanes" }, data.lanes.map((lane) => laneCard(lane, data.per_minute))),
      h("section", { "aria-labelledby": "more-title" },
        h("h2", { id: "more-title" }, "Inbound and workers"),
        h("p", {}, link("rejected", {}, data.rejected_calls + " rejected inbound calls"), " held."),
        data.workers.length
          ? table("Workers", [["Worker", (w) => w.worker_id], ["Host", (w) => w.hostname + " (pid " + w.pid + ")"],
            ["Last beat", (w) => age(w.age_seconds) + " ago"]], data.workers, "")
          : h("p", { class: "warn-text" }, "Warning: no worker has beaten. Nothing is being delivered.")));
    refreshTimer = setInterval(() => {
      // Not while the operator is on a control of the page: a refresh would move their focus.
      const active = document.activeElement;
      const idle = active === document.body || active === view.querySelector("h1");
      if (!document.hidden && parseHash().name === "overview" && idle) route(true);
    }, 15000);
  }

  function laneCard(lane, perMinute) {
    const title = DIRECTIONS[lane.direction] || lane.direction;
    const s = lane.states;
    const paused = lane.paused.paused;
    const counts = [["received", lane.received, {}], ["pending", s.pending], ["delivered", s.delivered],
      ["failed", s.failed], ["dead", s.dead], ["parked", s.parked], ["dropped", s.dropped], ["cancelled", s.cancelled]];
    const delivered = perMinute.delivered[lane.upstream] || [];
    const failed = perMinute.failed[lane.upstream] || [];
    return h("section", { class: "card lane", "aria-label": title },
      h("h2", {}, title),
      h("p", { class: paused ? "paused" : "running" },
        paused ? "Paused: " : "Not paused",
        paused ? (lane.paused.reason || "no reason given") : null,
        paused && lane.paused.since ? h("span", {}, " (since ", when(lane.paused.since), ")") : null),
      h("dl", { class: "counts" }, counts.map(([name, n, extra]) => h("div", {},
        h("dt", {}, name),
        h("dd", {}, link("deliveries", extra ? { upstream: lane.upstream } : { upstream: lane.upstream, state: name }, String(n || 0)))))),
      h("p", {}, "Oldest pending: ", h("strong", {}, age(lane.oldest_pending_age_seconds)), ". Delivered in the last hour: ",
        h("strong", {}, String(lane.delivered_last_hour)), "."),
      chart(lane.upstream, perMinute.since, delivered, failed));
  }

  function chart(upstream, since, delivered, failed) {
    // Bars: delivered per minute; failed per minute drawn below the axis, so neither depends
    // on colour; the numbers are also given in words under the chart.
    const width = 300, top = 60, bottom = 20, n = delivered.length || 60;
    const maxUp = Math.max(1, ...delivered), maxDown = Math.max(1, ...failed);
    const bar = width / n;
    const g = svg("svg", { viewBox: "0 0 " + width + " " + (top + bottom + 14), class: "chart", role: "img",
      "aria-label": "Deliveries per minute to " + upstream + " over the last hour" });
    g.appendChild(svg("line", { x1: 0, y1: top, x2: width, y2: top, class: "axis" }));
    const start = new Date(since).getTime();
    delivered.forEach((v, i) => {
      const label = new Date(start + i * 60000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      if (v) {
        const hgt = Math.max(1, (v / maxUp) * (top - 2));
        g.appendChild(svg("rect", { x: i * bar + 0.5, y: top - hgt, width: Math.max(1, bar - 1), height: hgt, class: "bar-ok" },
          svg("title", {}, label + ": " + v + " delivered")));
      }
      if (failed[i]) {
        const hgt = Math.max(1, (failed[i] / maxDown) * (bottom - 2));
        g.appendChild(svg("rect", { x: i * bar + 0.5, y: top + 1, width: Math.max(1, bar - 1), height: hgt, class: "bar-bad" },
          svg("title", {}, label + ": " + failed[i] + " failed or dead")));
      }
    });
    g.appendChild(svg("text", { x: 0, y: top + bottom + 12, class: "tick" }, "60 min ago"));
    g.appendChild(svg("text", { x: width, y: top + bottom + 12, class: "tick", "text-anchor": "end" }, "now"));
    const total = delivered.reduce((a, b) => a + b, 0);
    const bad = failed.reduce((a, b) => a + b, 0);
    const peak = Math.max(0, ...delivered);
    return h("figure", { class: "chart-box" }, g,
      h("figcaption", {}, "Per minute, last hour: " + total + " delivered (bars above the line, peak " + peak +
        "/min), " + bad + " failed or dead (bars below the line)."));
  }

  // -- Failures ------------------------------------------------------------------------------

  async function failuresScreen(_, params) {
    const since = params.get("since") || "";
    const upstream = params.get("upstream") || "";
    const states = params.getAll("state").length ? params.getAll("state") : ["failed", "dead"];
    const offset = Number(params.get("offset") || 0);
    const ms = durationMs(since);
    const updatedAfter = ms ? new Date(Date.now() - ms).toISOString() : null;
    const data = await api("GET", "failures", { upstream, state: states, updated_after: updatedAfter, offset, limit: PAGE });
    const form = h("form", { class: "filters", "aria-label": "Filter failures" },
      field("Upstream", select("upstream", [["", "any"], ...UPSTREAMS.map((u) => [u, u])], upstream)),
      field("Got there", select("since", SINCE, since)),
      checkboxes("States", "state", ["failed", "dead"], states),
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Show")));
    form.addEventListener("submit", (e) => { e.preventDefault(); window.location.hash = routeHref("failures", formValues(form)); });
    const rows = data.groups;
    render("Failures",
      h("p", { class: "meta" }, "Failed and dead deliveries grouped by upstream, last HTTP status and reason, the most recent first."),
      form,
      table("Failure groups", [
        ["Upstream", (g) => g.upstream],
        ["Status", (g) => g.status_code === null ? "no answer" : "HTTP " + g.status_code],
        ["Reason", (g) => h("span", { class: "reason" }, g.reason || "(none)")],
        ["Items", (g) => g.count + " (" + g.failed + " failed, " + g.dead + " dead)"],
        ["First seen", (g) => when(g.first_seen)],
        ["Last seen", (g) => when(g.last_seen)],
        ["", (g) => h("span", { class: "row-actions" },
          link("deliveries", listParams(g.replay), "List these"), " ",
          link("replay", listParams(g.replay), "Replay these…"))],
      ], rows, "No failed or dead deliveries match. Nothing to fix."),
      h("nav", { class: "pager", "aria-label": "Pages" },
        offset > 0 ? link("failures", { since, upstream, state: states, offset: Math.max(0, offset - PAGE) }, "← Previous groups") : null,
        data.next_offset !== null ? link("failures", { since, upstream, state: states, offset: data.next_offset }, "More groups →") : null));
  }

  function listParams(filters) {
    // A replay/filter body as the query of the Deliveries and Replay screens.
    const out = {};
    for (const [key, value] of Object.entries(filters)) {
      if (value === null || value === undefined || key === "dry_run") continue;
      out[key === "states" ? "state" : key] = Array.isArray(value) ? value : String(value);
    }
    return out;
  }

  // -- Deliveries ----------------------------------------------------------------------------

  const LIST_KEYS = ["direction", "upstream", "state", "email", "target", "operation", "created_after",
    "created_before", "updated_after", "updated_before", "status_code", "reason", "cursor"];

  async function deliveriesScreen(_, params) {
    const query = {};
    for (const key of LIST_KEYS) {
      const values = params.getAll(key);
      if (values.length) query[key] = key === "state" ? values : values[0];
    }
    const data = await api("GET", "deliveries", Object.assign({ limit: PAGE }, query));
    const form = deliveryFilters(params, "Search", (values) => {
      window.location.hash = routeHref("deliveries", values);
    });
    render("Deliveries",
      form,
      extraFilters(params),
      table("Deliveries", [
        ["ID", (d) => link("delivery/" + d.id, {}, "#" + d.id)],
        ["State", (d) => stateBadge(d.state)],
        ["Upstream", (d) => d.upstream + " · " + d.operation],
        ["Target", (d) => d.target || "—"],
        ["Email", (d) => d.email ? link("person", { email: d.email }, d.email) : "—"],
        ["Attempts", (d) => String(d.attempts)],
        ["Last status", (d) => d.last_status_code === null ? "—" : String(d.last_status_code)],
        ["Reason", (d) => h("span", { class: "reason" }, d.reason || "")],
        ["Changed", (d) => when(d.updated_at)],
      ], data.items, "No delivery matches these filters."),
      pager("deliveries", params, data.next_cursor));
  }

  function extraFilters(params) {
    // Filters that come from a failure group, shown so the list is not a mystery.
    const bits = [];
    if (params.get("status_code") !== null) bits.push("last status " + (params.get("status_code") === "0" ? "none (no answer)" : params.get("status_code")));
    if (params.get("reason") !== null) bits.push("reason “" + (params.get("reason") || "(none)") + "”");
    if (!bits.length) return null;
    const rest = {};
    for (const [k, v] of params.entries()) if (!["status_code", "reason", "cursor"].includes(k)) rest[k] = [].concat(rest[k] || [], v);
    return h("p", { class: "meta" }, "Also filtered by " + bits.join(" and ") + ". ", link("deliveries", rest, "Drop these filters"));
  }

  function deliveryFilters(params, submitText, onSubmit) {
    const chosen = params.getAll("state");
    const form = h("form", { class: "filters", "aria-label": "Filter deliveries" },
      field("Recipient email", input("email", params.get("email"), { type: "search", autocomplete: "off", inputmode: "email" })),
      field("Campaign, journey or event", input("target", params.get("target"))),
      field("Direction", select("direction", [["", "any"], ...Object.entries(DIRECTIONS)], params.get("direction"))),
      field("Upstream", select("upstream", [["", "any"], ...UPSTREAMS.map((u) => [u, u])], params.get("upstream"))),
      field("Operation", select("operation", [["", "any"], ...OPERATIONS.map((o) => [o, o])], params.get("operation"))),
      field("Created after", h("input", { name: "created_after_local", type: "datetime-local", value: isoToLocal(params.get("created_after")) })),
      field("Created before", h("input", { name: "created_before_local", type: "datetime-local", value: isoToLocal(params.get("created_before")) })),
      field("Changed after", h("input", { name: "updated_after_local", type: "datetime-local", value: isoToLocal(params.get("updated_after")) }), "a failed or dead item: when it got there"),
      checkboxes("States", "state", STATES, chosen),
      h("div", { class: "actions" }, h("button", { type: "submit" }, submitText)));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const values = formValues(form);
      for (const key of ["created_after", "created_before", "updated_after"]) {
        const iso = localToIso(values[key + "_local"]);
        delete values[key + "_local"];
        if (iso) values[key] = iso;
      }
      for (const key of ["status_code", "reason"]) if (params.get(key) !== null) values[key] = params.get(key);
      if (values.email) values.email = values.email.trim();
      onSubmit(values);
    });
    return form;
  }

  // -- Delivery detail -----------------------------------------------------------------------

  async function deliveryScreen(id) {
    const data = await api("GET", "deliveries/" + encodeURIComponent(id));
    const d = data.delivery;
    const canCancel = d.state === "pending" || d.state === "parked";
    const actions = h("div", { class: "actions" },
      d.state === "delivered"
        ? button("Send again (already delivered)", () => act(d.id, "retry", { force: true },
          "This delivery was already delivered. Send it again anyway?"))
        : button("Retry now", () => act(d.id, "retry", {}, null)),
      canCancel ? button("Cancel delivery", () => act(d.id, "cancel", {}, "Cancel delivery #" + d.id + "? It will not be sent."), "danger") : null,
      link("deliveries", { email: d.email || undefined }, d.email ? "Other deliveries to this email" : "All deliveries"));
    const facts = [
      ["State", stateBadge(d.state)],
      ["Reason", d.reason || "—"],
      ["Direction", DIRECTIONS[d.direction] || d.direction],
      ["Upstream and operation", d.upstream + " · " + d.operation],
      ["Campaign, journey or event", d.target || "—"],
      ["Email", d.email ? link("person", { email: d.email }, d.email) : "—"],
      ["CleverTap ID", d.clevertap_id || "—"],
      ["Attempts (this schedule)", String(d.attempts) + (d.deferrals ? " (+" + d.deferrals + " deferrals)" : "")],
      ["Next attempt", d.state === "pending" || d.state === "parked" ? when(d.next_attempt_at) : "—"],
      ["Last HTTP status", d.last_status_code === null ? "—" : String(d.last_status_code)],
      ["Upstream reference", d.upstream_ref || "—"],
      ["Created", when(d.created_at)],
      ["Last changed", when(d.updated_at)],
      ["Finished", when(d.finished_at)],
    ];
    const call = data.inbound_call;
    const req = data.upstream_request;
    render("Delivery #" + d.id + ": " + d.state,
      actions,
      h("dl", { class: "facts" }, facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v)))),
      h("section", { "aria-labelledby": "attempts-title" }, h("h2", { id: "attempts-title" }, "Attempts"),
        table("Attempts", [
          ["#", (a) => String(a.number)],
          ["Started", (a) => when(a.started_at)],
          ["Status", (a) => a.status_code === null ? "no answer" : "HTTP " + a.status_code],
          ["Outcome", (a) => a.outcome],
          ["Latency", (a) => Math.round(a.duration_ms) + " ms"],
          ["Error", (a) => h("span", { class: "reason" }, a.error || "—")],
          ["Response", (a) => a.response_body ? h("details", {}, h("summary", {}, "Response body"), pre(a.response_body)) : "—"],
        ], data.attempts, "No attempt yet.")),
      h("section", { "aria-labelledby": "request-title" }, h("h2", { id: "request-title" }, "Request sent upstream"),
        req ? [h("p", {}, h("code", {}, req.method + " " + req.path), " to " + req.upstream), req.note ? h("p", { class: "meta" }, req.note) : null, pre(req.body)]
          : [h("p", {}, "The stored payload cannot be read back as a request:"), pre(d.payload)]),
      h("section", { "aria-labelledby": "call-title" }, h("h2", { id: "call-title" }, "Inbound call as received"),
        call ? [
          h("dl", { class: "facts" }, [
            ["Received", when(call.received_at)], ["Route", call.route], ["Target", call.target || "—"],
            ["Answer", call.status + " (HTTP " + call.http_status + ")" + (call.reason ? ": " + call.reason : "")],
            ["Items", call.item_count + " accepted, " + call.skipped_count + " skipped"],
            ["Request id", call.request_id || "—"], ["Content type", call.content_type || "—"],
          ].map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v)))),
          call.body_truncated ? h("p", { class: "meta" }, "The body is cut: only its start was kept or is shown.") : null,
          pre(call.body)]
          : h("p", {}, "The inbound call is no longer held (purged).")));
  }

  async function act(id, action, params, confirmText) {
    if (confirmText && !window.confirm(confirmText)) return;
    try {
      const result = await api("POST", "deliveries/" + id + "/" + action, params);
      await route();
      say("Delivery #" + result.id + ": " + result.previous_state + " → " + result.state + ".");
    } catch (err) {
      say("Could not " + action + " delivery #" + id + ": " + err.message, true);
    }
  }

  // -- Replay --------------------------------------------------------------------------------

  async function replayScreen(_, params) {
    const form = deliveryFilters(params, "Count matching deliveries (dry run)", async (values) => {
      const since = values.since;
      delete values.since;
      const ms = durationMs(since);
      if (ms) values.updated_after = new Date(Date.now() - ms).toISOString();
      const body = { dry_run: true };
      for (const [key, value] of Object.entries(values)) {
        if (key === "state") body.states = [].concat(value);
        else if (key === "status_code") body.status_code = Number(value);
        else body[key] = value;
      }
      if (!body.states) body.states = ["failed", "dead"];
      await dryRun(body);
    });
    // "Died in the last two hours" in one choice.
    const sinceField = field("Got there (changed) in", select("since", SINCE, params.get("since")));
    form.insertBefore(sinceField, form.firstChild);
    const outcome = h("div", { id: "replay-outcome", "aria-live": "polite" });
    render("Replay",
      h("p", { class: "meta" }, "Send matching deliveries again, due now, on a fresh retry schedule. States default to failed and dead; delivered items are never replayed in bulk. First count, then confirm."),
      extraFilters(params), form, outcome);
    if (!params.getAll("state").length) for (const box of form.querySelectorAll("input[name=state]")) box.checked = ["failed", "dead"].includes(box.value);
    if ([...params.keys()].length) form.requestSubmit();
  }

  async function dryRun(body) {
    const outcome = document.getElementById("replay-outcome");
    let counted;
    try {
      counted = await api("POST", "replay", null, body);
    } catch (err) {
      outcome.replaceChildren(h("p", { class: "error", role: "alert" }, "Cannot count: " + err.message));
      return;
    }
    const described = h("pre", { class: "code" }, JSON.stringify(Object.assign({}, body, { dry_run: undefined }), null, 2));
    if (!counted.matched) {
      outcome.replaceChildren(h("p", {}, "No delivery matches: nothing to replay."), described);
      return;
    }
    const confirm = button("Replay " + plural(counted.matched, "delivery", "deliveries"), async () => {
      confirm.disabled = true;
      try {
        // A large replay answers in parts (max_seconds): go on with its cursor until complete.
        const done = { matched: 0, replayed: 0 };
        let cursor;
        for (;;) {
          const part = await api("POST", "replay", null, Object.assign({}, body, { dry_run: false, cursor }));
          done.matched += part.matched;
          done.replayed += part.replayed;
          if (part.complete !== false) break;
          cursor = part.next_cursor;
          say("Replayed " + done.replayed + " so far…");
        }
        outcome.replaceChildren(h("p", { class: "ok-text" }, "Replayed " + done.replayed + " of " +
          plural(done.matched, "matching delivery", "matching deliveries") + (done.replayed < done.matched ? " (the others changed state or were being sent at that moment)" : "") + "."),
        link("deliveries", listParams(Object.assign({}, body, { states: ["pending"] })), "Watch them in Deliveries"));
        say("Replayed " + done.replayed + " deliveries.");
      } catch (err) {
        confirm.disabled = false;
        say("Replay failed: " + err.message, true);
      }
    }, "danger");
    outcome.replaceChildren(h("p", {}, h("strong", {}, plural(counted.matched, "delivery matches.", "deliveries match.")), " Nothing has been sent yet."),
      described, h("div", { class: "actions" }, confirm, button("Cancel", () => outcome.replaceChildren(h("p", {}, "Not replayed.")), "secondary")));
    confirm.focus();
  }

  // -- Rejected calls ------------------------------------------------------------------------

  async function rejectedScreen(_, params) {
    const source = params.get("source") || "";
    const data = await api("GET", "rejected", { source, cursor: params.get("cursor"), limit: PAGE });
    const form = h("form", { class: "filters", "aria-label": "Filter rejected calls" },
      field("Source", select("source", [["", "any"], ["clevertap", "clevertap"], ["mailmodo", "mailmodo"]], source)),
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Show")));
    form.addEventListener("submit", (e) => { e.preventDefault(); window.location.hash = routeHref("rejected", formValues(form)); });
    render("Rejected calls",
      h("p", { class: "meta" }, "Authenticated inbound calls the bridge refused, newest first, with the reason. They were not forwarded."),
      form,
      table("Rejected calls", [
        ["Received", (r) => when(r.received_at)],
        ["Route", (r) => r.source + " · " + r.route + (r.target ? " · " + r.target : "")],
        ["Answer", (r) => "HTTP " + r.http_status],
        ["Reason", (r) => h("span", { class: "reason" }, r.reason || "—")],
        ["Body", (r) => h("details", {}, h("summary", {}, "Body" + (r.body_truncated ? " (cut)" : "")), pre(r.body))],
      ], data.items, "No rejected call is held."),
      pager("rejected", params, data.next_cursor));
  }

  // -- A person ------------------------------------------------------------------------------

  async function personScreen(_, params) {
    const email = (params.get("email") || "").trim();
    const form = h("form", { class: "filters", role: "search", "aria-label": "Find a person" },
      field("Email", input("email", email, { type: "search", inputmode: "email", autocomplete: "off" })),
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Look up")));
    form.addEventListener("submit", (e) => { e.preventDefault(); window.location.hash = routeHref("person", formValues(form)); });
    if (!email) {
      render("Person", h("p", { class: "meta" }, "What happened to someone: their CleverTap ID, every delivery in both directions, refused calls that name them, and their email consent (what the bridge learnt and told, status reads)."), form);
      return;
    }
    const [p, c] = await Promise.all([
      api("GET", "person", { email }),
      api("GET", "consent/" + encodeURIComponent(email.toLowerCase())),
    ]);
    const id = p.identity;
    const known = c.known;
    const counted = Object.entries(p.counts).filter(([, states]) => Object.keys(states).length);
    render(p.email, form,
      h("section", { "aria-labelledby": "identity-title" }, h("h2", { id: "identity-title" }, "Identity"),
        id ? h("p", {}, p.email + " ↔ CleverTap ID ", h("code", {}, id.clevertap_id), ", learnt from " + id.source + " on ", when(id.updated_at), ".")
          : h("p", {}, "No CleverTap ID is known for this email yet: Mailmodo activity for it waits (parked) or is sent by email identity, as configured.")),
      h("section", { "aria-labelledby": "counts-title" }, h("h2", { id: "counts-title" }, "Deliveries"),
        counted.length ? h("ul", {}, counted.map(([direction, states]) => h("li", {}, (DIRECTIONS[direction] || direction) + ": ",
          Object.entries(states).map(([state, n], i) => [i ? ", " : "", link("deliveries", { email: p.email, direction, state }, n + " " + state)]))))
          : h("p", {}, "No delivery is held for this email."),
        table("Newest deliveries", [
          ["ID", (d) => link("delivery/" + d.id, {}, "#" + d.id)],
          ["State", (d) => stateBadge(d.state)],
          ["Direction", (d) => DIRECTIONS[d.direction] || d.direction],
          ["Operation", (d) => d.operation + (d.target ? " · " + d.target : "")],
          ["Reason", (d) => h("span", { class: "reason" }, d.reason || "")],
          ["Changed", (d) => when(d.updated_at)],
        ], p.deliveries.items, ""),
        p.deliveries.next_cursor ? h("p", {}, link("deliveries", { email: p.email }, "All deliveries for this email →")) : null),
      h("section", { "aria-labelledby": "rejected-title" }, h("h2", { id: "rejected-title" }, "Rejected calls naming this email"),
        h("p", { class: "meta" }, "Searched the " + p.rejected.searched + " newest rejected calls."),
        table("Rejected calls", [
          ["Received", (r) => when(r.received_at)],
          ["Route", (r) => r.route],
          ["Reason", (r) => h("span", { class: "reason" }, r.reason || "—")],
          ["Body", (r) => h("details", {}, h("summary", {}, "Body"), pre(r.body))],
        ], p.rejected.items, "None.")),
      h("section", { "aria-labelledby": "consent-title" }, h("h2", { id: "consent-title" }, "Email consent"),
        known ? h("ul", {},
          h("li", {}, "Learnt from Mailmodo: " + (known.mailmodo_state || "nothing yet") + (known.mailmodo_reason ? " (" + known.mailmodo_reason + ")" : ""), known.mailmodo_at ? [" on ", when(known.mailmodo_at)] : ""),
          told("Mailmodo", known.told_mailmodo, known.told_mailmodo_at),
          told("CleverTap", known.told_clevertap, known.told_clevertap_at))
          : h("p", {}, "No consent change is known for this email."),
        table("Consent log", [
          ["When", (e) => when(e.at)],
          ["Channel", (e) => e.channel],
          ["State", (e) => e.state],
          ["Source", (e) => e.source],
          ["Told", (e) => e.told + (e.echo ? " (echo: not sent again)" : "")],
          ["Reason", (e) => h("span", { class: "reason" }, e.reason || "")],
        ], c.log, "Nothing logged."),
        table("Status reads", [
          // A read not yet due is only its slot: no delivery to open yet.
          ["ID", (r) => r.delivery_id == null ? "not yet made" : link("delivery/" + r.delivery_id, {}, "#" + r.delivery_id)],
          ["State", (r) => stateBadge(r.state)],
          ["Due", (r) => when(r.due_at)],
          ["Send", (r) => r.target || ""],
          ["Attempts", (r) => String(r.attempts)],
          ["Reason", (r) => h("span", { class: "reason" }, r.reason || "")],
        ], c.reads, "No status read is scheduled.")));
  }

  // -- start ---------------------------------------------------------------------------------

  window.addEventListener("hashchange", route);
  route();
})();
