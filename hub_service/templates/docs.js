// Swagger UI over this service's OpenAPI document. The document is fetched beside this page
// (api/v1/openapi.json) and its server set to the prefix this page was served under, so
// "Try it out" calls this service wherever the hub puts it. Requests go with the browser's
// hub login (same-origin cookie) and the XSRF token the hub wants with a cookie.
(function () {
  "use strict";
  const body = document.body;
  const status = document.getElementById("docs-status");
  const xsrf = body.dataset.xsrf;
  // This page is <prefix>api/v1/docs: two levels up is the service's prefix.
  const prefix = new URL("../../", window.location.href).pathname.replace(/\/$/, "");

  function withXsrf(request) {
    if (xsrf) {
      request.headers = request.headers || {};
      request.headers["X-XSRFToken"] = xsrf;
    }
    return request;
  }

  fetch(body.dataset.spec, {
    credentials: "same-origin",
    headers: { Accept: "application/json", "X-XSRFToken": xsrf },
  })
    .then(function (response) {
      if (!response.ok) {
        throw new Error("the API description could not be loaded (HTTP " + response.status + ")");
      }
      return response.json();
    })
    .then(function (spec) {
      spec.servers = [{ url: prefix, description: "this service" }];
      window.ui = SwaggerUIBundle({
        spec: spec,
        dom_id: "#swagger-ui",
        deepLinking: true,
        displayRequestDuration: true,
        docExpansion: "list",
        validatorUrl: null,
        withCredentials: true,
        requestInterceptor: withXsrf,
        presets: [SwaggerUIBundle.presets.apis],
        layout: "BaseLayout",
      });
      status.textContent = "";
    })
    .catch(function (error) {
      status.textContent = "Sorry: " + error.message + ".";
      status.className = "error";
    });
})();
