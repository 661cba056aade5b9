// fleetwatch dashboard behaviour. Every page works without this file (plain links and forms);
// it adds: the theme override, times in the viewer's chosen zone, live updates from /live that
// re-fetch page fragments (htmx + idiomorph morphing, so scroll, focus and checked boxes stay),
// pausing those while the user edits or has rows selected, the firing count in the tab title,
// and keyboard use. Loaded in <head> without `defer`: the theme is applied before first paint.
// No inline script anywhere (the CSP forbids it); everything is wired from data attributes.
(function () {
  "use strict";
  var store = {
    get: function (k) { try { return localStorage.getItem(k); } catch (e) { return null; } },
    set: function (k, v) { try { localStorage.setItem(k, v); } catch (e) { /* private mode */ } }
  };

  // ---- theme: "system" (default), "light" or "dark" -----------------------------------------
  function applyTheme(t) {
    if (t === "light" || t === "dark") document.documentElement.setAttribute("data-theme", t);
    else document.documentElement.removeAttribute("data-theme");
  }
  applyTheme(store.get("fw-theme"));

  // ---- time zones: "browser" (default), "utc" or "fleet" --------------------------------------
  // The server renders every time in UTC inside <time datetime="ISO"> (or an SVG <text data-ts>)
  // with data-fmt = datetime | time | date | hour | day. Here it is rewritten in the chosen zone,
  // with the zone named on the page and UTC in the tooltip.
  function zoneChoice() { return store.get("fw-tz") || "browser"; }
  function fleetZone() { return document.body.getAttribute("data-fleet-tz") || "UTC"; }
  function browserZone() {
    try { return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch (e) { return "UTC"; }
  }
  function zoneName(choice) {
    if (choice === "utc") return "UTC";
    if (choice === "fleet") return fleetZone();
    return browserZone();
  }
  var formats = {
    datetime: { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" },
    time: { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" },
    date: { year: "numeric", month: "2-digit", day: "2-digit" },
    hour: { hour: "2-digit", minute: "2-digit", hourCycle: "h23" },
    day: { weekday: "short", day: "numeric" }
  };
  var formatters = {};
  function formatter(zone, fmt) {
    var key = zone + "|" + fmt;
    if (!formatters[key]) {
      var o = Object.assign({ timeZone: zone }, formats[fmt] || formats.datetime);
      formatters[key] = new Intl.DateTimeFormat("en-CA", o);
    }
    return formatters[key];
  }
  function renderTimes(root) {
    var zone = zoneName(zoneChoice());
    var els = (root || document).querySelectorAll("time[datetime], [data-ts]");
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      var iso = el.getAttribute("datetime") || el.getAttribute("data-ts");
      var d = new Date(iso);
      if (isNaN(d.getTime())) continue;
      var fmt = el.getAttribute("data-fmt") || "datetime";
      var text = formatter(zone, fmt).format(d).replace(",", "");
      if (el.textContent !== text) el.textContent = text;
      if (el.tagName.toLowerCase() === "time") el.title = d.toISOString().replace(".000Z", "Z") + " (UTC)";
    }
    var names = document.querySelectorAll("[data-zone-name]");
    for (var j = 0; j < names.length; j++) names[j].textContent = zone;
  }

  // ---- live updates ---------------------------------------------------------------------------
  // Elements with data-live="alerts devices …" re-fetch their own URL (hx-get, hx-select) when
  // /live announces one of their topics; they carry hx-trigger="fw-live" so htmx does the
  // fetch and the morph. While the user edits a form or has rows selected, refreshes wait
  // (the status line says so) and run once the edit ends.
  var baseTitle = null;
  var pending = {};
  var liveState = "connecting";
  function paused() {
    var a = document.activeElement;
    if (a && a.closest && a.closest("form[data-pause-live]") && /^(INPUT|TEXTAREA|SELECT)$/.test(a.tagName)) return "editing";
    if (document.querySelector("input[data-select]:checked")) return "selection";
    return null;
  }
  function setStatus() {
    var el = document.getElementById("live-status");
    if (!el) return;
    var why = paused();
    var waiting = Object.keys(pending).length > 0;
    var text, cls;
    if (liveState !== "open") {
      text = liveState === "connecting" ? "connecting…" : "reconnecting…"; cls = "live-off";
    } else if (why) {
      text = "updates paused while you " + (why === "editing" ? "edit" : "have rows selected") + (waiting ? " (changes waiting)" : "");
      cls = "live-paused";
    } else {
      text = "live"; cls = "live-on";
    }
    el.textContent = text;
    el.className = "live " + cls;
  }
  function setTitle(firing) {
    if (baseTitle === null) baseTitle = document.title;
    document.title = (firing > 0 ? "(" + firing + " firing) " : "") + baseTitle;
    var c = document.querySelectorAll("[data-firing-count]");
    for (var i = 0; i < c.length; i++) c[i].textContent = String(firing);
  }
  function refresh(topics) {
    var els = document.querySelectorAll("[data-live]");
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      var wants = (el.getAttribute("data-live") || "").split(/\s+/);
      var hit = topics.some(function (t) { return wants.indexOf(t) >= 0; });
      if (!hit) continue;
      if (paused()) { pending[el.id] = true; continue; }
      delete pending[el.id];
      if (window.htmx) window.htmx.trigger(el, "fw-live");
    }
    setStatus();
  }
  function flushPending() {
    if (paused()) { setStatus(); return; }
    var ids = Object.keys(pending);
    pending = {};
    for (var i = 0; i < ids.length; i++) {
      var el = document.getElementById(ids[i]);
      if (el && window.htmx) window.htmx.trigger(el, "fw-live");
    }
    setStatus();
  }
  var es = null;
  function connect() {
    if (!window.EventSource || !document.body.hasAttribute("data-live-url")) return;
    if (es) es.close();
    es = new EventSource(document.body.getAttribute("data-live-url"));
    es.addEventListener("open", function () { liveState = "open"; setStatus(); });
    es.addEventListener("error", function () { liveState = "reconnecting"; setStatus(); });
    es.addEventListener("hello", function (e) {
      liveState = "open";
      try { setTitle(JSON.parse(e.data).firing); } catch (x) { /* ignore */ }
      setStatus();
    });
    es.addEventListener("change", function (e) {
      var d;
      try { d = JSON.parse(e.data); } catch (x) { return; }
      setTitle(d.firing);
      refresh(d.topics || []);
    });
  }

  // ---- selection ------------------------------------------------------------------------------
  // <input type=checkbox data-select-all="name"> toggles every input[data-select][name=name];
  // [data-select-count] shows how many are checked.
  function syncSelection() {
    var boxes = document.querySelectorAll("input[data-select]");
    var n = 0;
    for (var i = 0; i < boxes.length; i++) if (boxes[i].checked) n++;
    var counts = document.querySelectorAll("[data-select-count]");
    for (var j = 0; j < counts.length; j++) counts[j].textContent = String(n);
    var bars = document.querySelectorAll("[data-needs-selection]");
    for (var k = 0; k < bars.length; k++) bars[k].hidden = n === 0;
  }

  // ---- keyboard -------------------------------------------------------------------------------
  // "/" focuses the search box; "j"/"k" move through rows (tr[data-row]); "x" selects the
  // current row; "a" acknowledges it (its [data-key=ack] button); Enter opens its link;
  // "?" shows the help ([data-keys-help]).
  function rows() { return Array.prototype.slice.call(document.querySelectorAll("[data-row]")); }
  function typing(e) {
    var t = e.target;
    return t && (/^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName) || t.isContentEditable);
  }
  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey || typing(e)) return;
    var list = rows();
    var cur = document.activeElement && document.activeElement.closest ? document.activeElement.closest("[data-row]") : null;
    var i = cur ? list.indexOf(cur) : -1;
    if (e.key === "/") {
      var s = document.querySelector("[data-search]");
      if (s) { e.preventDefault(); s.focus(); s.select && s.select(); }
    } else if (e.key === "j" || e.key === "k") {
      if (!list.length) return;
      e.preventDefault();
      var n = e.key === "j" ? Math.min(i + 1, list.length - 1) : Math.max(i - 1, 0);
      list[n].focus();
    } else if (e.key === "x" && cur) {
      var box = cur.querySelector("input[data-select]");
      if (box) { e.preventDefault(); box.checked = !box.checked; box.dispatchEvent(new Event("change", { bubbles: true })); }
    } else if (e.key === "a" && cur) {
      var b = cur.querySelector("[data-key=ack]");
      if (b) { e.preventDefault(); b.click(); }
    } else if (e.key === "Enter" && cur && document.activeElement === cur) {
      var link = cur.querySelector("a[href]");
      if (link) { e.preventDefault(); link.click(); }
    } else if (e.key === "?") {
      var h = document.querySelector("[data-keys-help]");
      if (h) { e.preventDefault(); h.hidden = !h.hidden; }
    }
  }

  // ---- wiring ---------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", function () {
    var theme = document.getElementById("theme-select");
    if (theme) {
      theme.value = store.get("fw-theme") || "system";
      theme.addEventListener("change", function () { store.set("fw-theme", theme.value); applyTheme(theme.value); });
    }
    var tz = document.getElementById("tz-select");
    if (tz) {
      tz.value = zoneChoice();
      var opts = tz.options;
      for (var i = 0; i < opts.length; i++) {
        if (opts[i].value === "browser") opts[i].textContent = "Browser (" + browserZone() + ")";
        if (opts[i].value === "fleet") opts[i].textContent = "Fleet (" + fleetZone() + ")";
      }
      tz.addEventListener("change", function () { store.set("fw-tz", tz.value); renderTimes(); });
    }
    // Self-submitting selects (filters) without inline handlers.
    document.addEventListener("change", function (e) {
      var t = e.target;
      if (t.matches && t.matches("[data-autosubmit]") && t.form) t.form.requestSubmit ? t.form.requestSubmit() : t.form.submit();
      if (t.matches && t.matches("input[data-select-all]")) {
        var boxes = document.querySelectorAll("input[data-select][name='" + t.getAttribute("data-select-all") + "']");
        for (var i = 0; i < boxes.length; i++) boxes[i].checked = t.checked;
      }
      if (t.matches && t.matches("input[data-select], input[data-select-all]")) { syncSelection(); flushPending(); }
    });
    document.addEventListener("focusout", function () { setTimeout(flushPending, 0); });
    document.addEventListener("reset", function () { setTimeout(function () { syncSelection(); flushPending(); }, 0); });
    document.addEventListener("keydown", onKey);
    document.body.addEventListener("htmx:afterSettle", function (e) { renderTimes(e.target); syncSelection(); });
    renderTimes();
    syncSelection();
    setStatus();
    connect();
    // Close the stream when the page goes away: a browser allows six connections per site, and
    // a stream left to the page's teardown (or kept by the back-forward cache) holds one of
    // them, so a few quick navigations would stall the next page. Reopen on a return from
    // the back-forward cache.
    window.addEventListener("pagehide", function () { if (es) { es.close(); es = null; } });
    window.addEventListener("pageshow", function (e) { if (e.persisted) { liveState = "connecting"; setStatus(); connect(); } });
  });
})();
