// Starts the vendored Swagger UI on this service's own /openapi.json. queryConfigEnabled is
// false so that no ?url= or ?configUrl= in a link can point the explorer elsewhere.
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute("content") : null;
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    queryConfigEnabled: false,
    deepLinking: false,
    validatorUrl: null,
    requestInterceptor: function (request) {
      // A signed-in operator's writes go with the session cookie: they need its CSRF value.
      if (csrf && request.method && !/^(GET|HEAD|OPTIONS)$/i.test(request.method)) {
        request.headers["X-CSRF-Token"] = csrf;
      }
      return request;
    },
  });
})();
