// Swagger UI for ember's API page (/docs): the spec served at /openapi.yaml, "Try it out" on by default, every
// request to this same server. A separate file, not an inline script, so that a strict Content-Security-Policy
// (script-src 'self') holds.
"use strict";

// The spec names http://localhost:8080 as its server; the page sends its requests to whatever origin served it
// instead (another port, a proxy, a cluster address), so "Try it out" never goes cross-origin.
function sameOriginServer() {
  return {
    statePlugins: {
      spec: {
        wrapActions: {
          updateJsonSpec: function (original) {
            return function (spec) {
              if (spec && typeof spec === "object") {
                spec.servers = [{ url: window.location.origin, description: "this server" }];
              }
              return original(spec);
            };
          },
        },
      },
    },
  };
}

window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.yaml",
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    plugins: [sameOriginServer],
    layout: "BaseLayout",
    deepLinking: true,
    tryItOutEnabled: true,
    displayRequestDuration: true,
    // No badge from validator.swagger.io: the page makes no request beyond this server.
    validatorUrl: null,
    // Only this server's own spec: ignore ?url= and ?configUrl= in the page's address.
    queryConfigEnabled: false,
  });
});
