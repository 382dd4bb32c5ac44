// The operator page's live parts: countdowns to each option's expiry tick on the tenant's
// clock, the SSE event feed, rows and options refreshed from /v1 when an event names their
// lot, the test-clock control and sign-out. Every value from the service or Koban is put
// in the page with textContent, never as markup.
(function () {
  "use strict";
  var body = document.body;
  var view = body.dataset.view;
  if (!body.dataset.tenant) return; // the sign-in form has nothing live
  var base = "/v1/tenants/" + encodeURIComponent(body.dataset.tenant);
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute("content") : "";
  // The tenant's clock minus the browser's: a sandbox tenant's test clock can be far ahead.
  var skew = Number(body.dataset.now) - Date.now() / 1000;
  var TYPES = [
    "koban.option.placed", "koban.option.prolonged", "koban.option.promoted",
    "koban.option.expired", "koban.option.cancelled", "koban.option.converted",
    "koban.option.superseded", "koban.option.expiring", "koban.lot.imported",
    "koban.lot.prereserved", "koban.lot.reserved", "koban.lot.withdrawn",
    "koban.lot.status_changed", "koban.sync.drift_detected", "koban.intent.resolved",
  ];
  var TICK_S = 1800;

  function tenantNow() { return Date.now() / 1000 + skew; }
  function iso(seconds) { return new Date(seconds * 1000).toISOString().replace(".000Z", "Z"); }
  function epoch(text) {
    var at = text ? Date.parse(text) : NaN;
    return isNaN(at) ? null : at / 1000;
  }
  function put(el, value) { if (el) el.textContent = value == null ? "" : String(value); }
  function make(tag, value, className) {
    var el = document.createElement(tag);
    put(el, value);
    if (className) el.className = className;
    return el;
  }
  function lotLink(extcode) {
    var a = make("a", extcode);
    a.href = "/ui/lots/" + encodeURIComponent(extcode);
    return a;
  }
  function chip(el, status) {
    if (!el) return;
    put(el, status);
    el.className = "chip chip-" + String(status).toLowerCase().replace(/[^a-z0-9_-]/g, "");
  }

  function remaining(seconds) {
    if (seconds <= 0) return "due";
    var d = Math.floor(seconds / 86400), h = Math.floor((seconds % 86400) / 3600);
    var m = Math.floor((seconds % 3600) / 60), s = Math.floor(seconds % 60);
    if (d) return d + "d " + h + "h " + m + "m";
    if (h) return h + "h " + m + "m " + s + "s";
    return m + "m " + s + "s";
  }
  function tick() {
    var now = tenantNow();
    put(document.getElementById("tenant-now"), iso(Math.floor(now)));
    put(document.getElementById("next-tick"), iso((Math.floor(now / TICK_S) + 1) * TICK_S));
    var counters = document.querySelectorAll(".countdown");
    for (var i = 0; i < counters.length; i++) {
      var at = epoch(counters[i].dataset.expiry);
      put(counters[i], at == null ? "" : "in " + remaining(at - now));
    }
  }

  function call(method, path, json) {
    var headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrf;
    if (json !== undefined) headers["Content-Type"] = "application/json";
    return fetch(path, {
      method: method, headers: headers, credentials: "same-origin",
      body: json === undefined ? undefined : JSON.stringify(json),
    }).then(function (response) {
      if (response.status === 401) location.assign("/ui/"); // signed out elsewhere
      return response.json().then(function (answer) {
        return { status: response.status, body: answer };
      });
    });
  }

  // --- the tenant view: one row per lot
  function updateRow(lot) {
    var row = document.getElementById("lot-" + lot.extcode);
    if (!row) return;
    chip(row.querySelector('[data-field="status"]'), lot.status);
    put(row.querySelector('[data-field="options"]'), lot.options.length);
    put(row.querySelector('[data-field="next"]'), lot.nextTick || "");
    var counter = row.querySelector('[data-field="countdown"]');
    if (counter) counter.dataset.expiry = lot.nextTick || "";
    put(row.querySelector('[data-field="pending"]'), lot.pendingPlacements.length);
    var list = document.getElementById("pending");
    if (!list) return;
    var old = list.querySelectorAll("li");
    for (var i = 0; i < old.length; i++) {
      if (old[i].dataset.extcode === lot.extcode || old[i].classList.contains("none")) {
        list.removeChild(old[i]);
      }
    }
    lot.pendingPlacements.forEach(function (p) {
      var li = make("li");
      li.dataset.extcode = lot.extcode;
      li.appendChild(lotLink(lot.extcode));
      li.appendChild(document.createTextNode(
        " rank " + p.rank + " · " + (p.thirdGuid || "redacted") + " · since " + p.createdAt));
      list.appendChild(li);
    });
  }

  var queued = new Set();
  var flushing = null;
  function refreshRow(extcode) {
    if (!extcode) return;
    queued.add(extcode);
    if (!flushing) flushing = setTimeout(flush, 200); // events come in bursts on a tick
  }
  function flush() {
    flushing = null;
    var codes = Array.from(queued);
    queued.clear();
    if (codes.length > 50) { refreshAll(); return; }
    codes.forEach(function (code) {
      call("GET", base + "/lots/" + encodeURIComponent(code)).then(function (r) {
        if (r.status === 200) updateRow(r.body);
      });
    });
  }
  function refreshAll(cursor) {
    var path = base + "/lots?limit=1000" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
    call("GET", path).then(function (r) {
      if (r.status !== 200) return;
      r.body.items.forEach(updateRow);
      if (r.body.nextCursor) refreshAll(r.body.nextCursor);
    });
  }

  // --- the lot view
  function renderLot(lot) {
    chip(document.getElementById("lot-status"), lot.status);
    put(document.getElementById("lot-version"), lot.version);
    put(document.getElementById("lot-next"), lot.nextTick || "none");
    var rows = document.querySelector("#options tbody");
    while (rows.firstChild) rows.removeChild(rows.firstChild);
    lot.options.forEach(function (o) {
      var tr = make("tr", null, "option");
      tr.dataset.rank = o.rank;
      [o.rank, o.thirdGuid || "redacted", o.partnerGuid || "", o.deadline || "",
        o.effectiveExpiry || ""].forEach(function (v) { tr.appendChild(make("td", v)); });
      var cell = make("td");
      var counter = make("span", null, "countdown");
      counter.dataset.expiry = o.effectiveExpiry || "";
      cell.appendChild(counter);
      tr.appendChild(cell);
      rows.appendChild(tr);
    });
    document.getElementById("no-options").hidden = lot.options.length > 0;
    var pending = document.getElementById("lot-pending");
    while (pending.firstChild) pending.removeChild(pending.firstChild);
    lot.pendingPlacements.forEach(function (p) {
      pending.appendChild(make("li", "rank " + p.rank + " · " + (p.thirdGuid || "redacted") +
        " · since " + p.createdAt));
    });
    var pre = lot.prereservation;
    put(document.getElementById("lot-prereservation"), pre ?
      (pre.thirdGuid || "redacted") + " · price " + pre.price + " · deposit " + pre.deposit : "none");
    var states = document.querySelectorAll("#chart .state");
    for (var i = 0; i < states.length; i++) states[i].classList.remove("current");
    lot.statePath.forEach(function (name) {
      var state = document.getElementById("state-" + name);
      if (state) state.classList.add("current");
    });
    document.getElementById("chart").dataset.statePath = lot.statePath.join(" ");
    tick();
  }
  function refreshLot() {
    call("GET", base + "/lots/" + encodeURIComponent(body.dataset.extcode)).then(function (r) {
      if (r.status === 200) renderLot(r.body);
    });
  }
  function addHistory(event) {
    var list = document.getElementById("history");
    var li = make("li");
    li.appendChild(make("time", event.time));
    li.appendChild(document.createTextNode(" "));
    li.appendChild(make("b", event.type));
    if (event.data && event.data.rank) li.appendChild(document.createTextNode(" rank " + event.data.rank));
    list.appendChild(li);
  }

  // --- the live feed
  var MAX_FEED = 200;
  function showEvent(event) {
    var feed = document.getElementById("feed");
    var li = make("li");
    li.appendChild(make("time", event.time));
    li.appendChild(document.createTextNode(" "));
    li.appendChild(make("b", event.type));
    li.appendChild(document.createTextNode(" "));
    if (event.subject) li.appendChild(lotLink(event.subject));
    feed.insertBefore(li, feed.firstChild);
    while (feed.children.length > MAX_FEED) feed.removeChild(feed.lastChild);
  }
  function onEvent(message) {
    var event;
    try { event = JSON.parse(message.data); } catch (e) { return; }
    showEvent(event);
    if (view === "tenant") refreshRow(event.subject);
    if (view === "lot" && event.subject === body.dataset.extcode) {
      addHistory(event);
      refreshLot();
    }
  }
  var state = document.getElementById("feed-state");
  // From the stream's end as the page was rendered: nothing written meanwhile is missed.
  var after = body.dataset.after;
  var source = new EventSource(
    base + "/events/stream" + (after ? "?after=" + encodeURIComponent(after) : ""));
  source.onopen = function () { put(state, "live"); state.className = "chip chip-live"; };
  source.onerror = function () {
    put(state, source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
    state.className = "chip chip-off";
  };
  TYPES.forEach(function (type) { source.addEventListener(type, onEvent); });

  // --- scheduler heartbeat, from /readyz
  function heartbeat() {
    fetch("/readyz").then(function (r) { return r.json(); }).then(function (ready) {
      var s = ready.scheduler;
      put(document.getElementById("heartbeat"),
        s ? "beat " + Math.max(0, Math.round(s.ageSeconds)) + " s ago" : "no heartbeat");
    }).catch(function () { put(document.getElementById("heartbeat"), "unknown"); });
  }

  // --- controls
  var filter = document.getElementById("filter");
  if (filter) {
    var rows = Array.prototype.slice.call(document.querySelectorAll(".lot-row"));
    filter.addEventListener("input", function () {
      var q = filter.value.trim().toLowerCase();
      rows.forEach(function (row) {
        row.hidden = q !== "" && row.textContent.toLowerCase().indexOf(q) < 0;
      });
    });
  }
  var clock = document.getElementById("clock-control");
  function move(request) {
    var answer = document.getElementById("clock-answer");
    put(answer, "moving…");
    call("POST", base + "/clock", request).then(function (r) {
      if (r.status !== 200) { put(answer, r.body.errorCode + ": " + r.body.message); return; }
      skew = epoch(r.body.now) - Date.now() / 1000;
      put(answer, "now " + r.body.now + " · " + r.body.ticksRun.length + " tick(s) run");
      tick();
    });
  }
  if (clock) {
    var buttons = clock.querySelectorAll("[data-advance-by]");
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].addEventListener("click", function (e) {
        move({ advanceBy: e.currentTarget.dataset.advanceBy });
      });
    }
    clock.addEventListener("submit", function (e) {
      e.preventDefault();
      var value = document.getElementById("advance-to").value;
      if (value) move({ advanceTo: new Date(value).toISOString().replace(".000Z", "Z") });
    });
  }
  var out = document.getElementById("sign-out");
  if (out) {
    out.addEventListener("click", function () {
      source.close();
      fetch("/ui/session", {
        method: "DELETE", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin",
      }).then(function () { location.assign("/ui/"); });
    });
  }

  tick();
  setInterval(tick, 1000);
  if (view === "tenant") { heartbeat(); setInterval(heartbeat, 10000); }
})();
