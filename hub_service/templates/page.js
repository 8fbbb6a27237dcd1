// Keeps the page current while it is open: asks for it again with the ETag it holds (304
// while nothing changed) and swaps in the parts marked data-live; ages tick in between.
(function () {
  "use strict";
  const body = document.body;
  const every = Number(body.dataset.refreshSeconds) * 1000;
  const status = document.getElementById("refresh-status");
  let etag = body.dataset.etag;
  let renderedAt = performance.now();
  let busy = false;
  let timer = null;

  // The same words as duration_text in hub_service/page.py.
  function duration(seconds) {
    const total = Math.max(0, Math.floor(seconds));
    if (total < 60) return total + " s";
    let minutes = Math.floor(total / 60);
    const secs = total % 60;
    if (minutes < 60) return minutes < 10 && secs ? minutes + " min " + secs + " s" : minutes + " min";
    let hours = Math.floor(minutes / 60);
    minutes %= 60;
    if (hours < 24) return minutes ? hours + " h " + minutes + " min" : hours + " h";
    const days = Math.floor(hours / 24);
    hours %= 24;
    return hours ? days + " d " + hours + " h" : days + " d";
  }

  function tick() {
    const elapsed = (performance.now() - renderedAt) / 1000;
    document.querySelectorAll("[data-age]").forEach(function (element) {
      element.textContent = duration(Number(element.dataset.age) + elapsed);
    });
  }

  function say(text) {
    status.textContent = text;
  }

  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const response = await fetch(location.href, {
        headers: { Accept: "text/html", "If-None-Match": etag, "X-XSRFToken": body.dataset.xsrf },
        credentials: "same-origin",
        cache: "no-store",
        redirect: "manual",
      });
      if (response.status === 304) {
        say("Refreshes by itself every " + every / 1000 + " s; no change since.");
        return;
      }
      if (response.type === "opaqueredirect" || response.status === 401 || response.status === 403) {
        say("Signed out: reload the page to sign in again.");
        clearInterval(timer);
        return;
      }
      if (!response.ok) {
        say("Could not refresh (HTTP " + response.status + "); trying again.");
        return;
      }
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      document.querySelectorAll("[data-live]").forEach(function (old) {
        const part = fresh.getElementById(old.id);
        if (part) old.replaceWith(document.importNode(part, true));
      });
      etag = response.headers.get("ETag") || etag;
      renderedAt = performance.now();
      say("Refreshes by itself every " + every / 1000 + " s; updated at " + new Date().toLocaleTimeString() + ".");
    } catch (error) {
      say("Could not reach the service; trying again.");
    } finally {
      busy = false;
    }
  }

  if (every > 0) {
    say("Refreshes by itself every " + every / 1000 + " s.");
    timer = setInterval(refresh, every);
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) refresh();
    });
  }
  setInterval(tick, 1000);

  // A job's output as it comes (Server-Sent Events); without JavaScript the link shows the
  // output so far as text.
  let following = null;
  document.addEventListener("click", function (event) {
    const link = event.target.closest("a[data-follow]");
    if (!link) return;
    event.preventDefault();
    const pane = document.getElementById("live-log");
    if (following) following.close();
    pane.hidden = false;
    pane.textContent = "";
    following = new EventSource(link.dataset.follow);
    const show = function (line) {
      pane.textContent += line + "\n";
      pane.scrollTop = pane.scrollHeight;
    };
    ["stdout", "stderr", "combined"].forEach(function (name) {
      following.addEventListener(name, function (message) { show(message.data); });
    });
    following.addEventListener("status", function (message) {
      show("(queued, position " + (JSON.parse(message.data).position || "?") + ")");
    });
    following.addEventListener("end", function (message) {
      const end = JSON.parse(message.data);
      show("(" + end.status + (end.exit_code === null ? "" : ", exit code " + end.exit_code) + ")");
      following.close();
    });
  });
})();
