(function () {
  const body = document.body;
  const main = document.getElementById("waiting");
  const api = body.dataset.api, xsrf = body.dataset.xsrf;
  const seconds = Number(body.dataset.pollSeconds) || 2;
  const set = (id, text) => { const el = document.getElementById(id); if (el && text !== undefined && text !== null) el.textContent = text; };
  function show(view) {
    set("position", view.position === null ? "…" : "#" + view.position);
    set("queued", String(view.queued));
    set("eta", view.eta_text);
    if (view.message) set("note", view.message);
  }
  // What to do with the request's state: the same for a pushed event and a polled view.
  function follow(view) {
    if (view.status === "waiting") { show(view); return; }
    if (view.status === "starting") { set("note", "A GPU is free: your server is starting…"); return; }
    if (view.status === "started") { window.location.assign(view.url || view.server_url || body.dataset.server); return; }
    window.location.reload();  // it ended: the page says how
  }
  async function poll() {
    try {
      const answer = await fetch(api, { headers: { Accept: "application/json", "X-XSRFToken": xsrf }, credentials: "same-origin" });
      if (answer.ok) follow(await answer.json());
    } catch (err) { /* the next poll tries again */ }
  }
  let polling = null;
  function startPolling() { if (polling === null) polling = setInterval(poll, seconds * 1000); }
  // The page's own refresh (for browsers without JavaScript) is not needed here.
  const refresh = document.getElementById("refresh");
  if (refresh) refresh.remove();
  if (main.dataset.status !== "waiting") return;
  if (!window.EventSource) { startPolling(); return; }
  // Changes are pushed; the login cookie goes along, the form's token in the query (an
  // EventSource sends no headers of its own).
  const events = new EventSource(api + "/events?_xsrf=" + encodeURIComponent(xsrf), { withCredentials: true });
  events.addEventListener("open", () => { main.dataset.live = "events"; });
  for (const name of ["position", "starting"]) {
    events.addEventListener(name, (e) => follow(JSON.parse(e.data)));
  }
  for (const name of ["started", "ended"]) {
    events.addEventListener(name, (e) => { events.close(); follow(JSON.parse(e.data)); });
  }
  // The stream lost (the service restarting, a proxy cutting it): follow by asking instead.
  events.addEventListener("error", () => {
    if (events.readyState === EventSource.CLOSED) { main.dataset.live = "polling"; startPolling(); }
  });
})();
