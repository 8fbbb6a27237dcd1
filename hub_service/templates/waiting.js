(function () {
  const body = document.body;
  const api = body.dataset.api, xsrf = body.dataset.xsrf;
  const seconds = Number(body.dataset.pollSeconds) || 2;
  const set = (id, text) => { const el = document.getElementById(id); if (el && text !== undefined && text !== null) el.textContent = text; };
  async function follow() {
    let view;
    try {
      const answer = await fetch(api, { headers: { Accept: "application/json", "X-XSRFToken": xsrf }, credentials: "same-origin" });
      if (!answer.ok) return;
      view = await answer.json();
    } catch (err) { return; }
    if (view.status === "starting") { window.location.assign(body.dataset.spawnPending); return; }
    if (view.status === "started") { window.location.assign(body.dataset.server); return; }
    if (view.status !== "waiting") { window.location.reload(); return; }
    set("position", view.position === null ? "…" : "#" + view.position);
    set("queued", String(view.queued));
    set("eta", view.eta_text);
    if (view.message) set("note", view.message);
  }
  // The page's own refresh (for browsers without JavaScript) is not needed here.
  const refresh = document.getElementById("refresh");
  if (refresh) refresh.remove();
  setInterval(follow, seconds * 1000);
})();
