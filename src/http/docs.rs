//! The API page at `/docs`: Swagger UI over the spec this server serves at /openapi.yaml, with "Try it out"
//! against this same server. Swagger UI's files (npm `swagger-ui-dist`, pinned by docs/api/package-lock.json and
//! installed by the Makefile before cargo runs) are embedded in the binary: the page fetches nothing from
//! anywhere else, and a strict Content-Security-Policy says so to the browser.

use axum::extract::Path;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::service::{ApiError, AppState};

macro_rules! swagger_ui {
    ($file:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api/node_modules/swagger-ui-dist/", $file))
    };
}

/// The page and what it loads: name under /docs/, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("init.js", "text/javascript; charset=utf-8", include_bytes!("../../docs/api/init.js")),
    ("swagger-ui-bundle.js", "text/javascript; charset=utf-8", swagger_ui!("swagger-ui-bundle.js")),
    ("swagger-ui.css", "text/css; charset=utf-8", swagger_ui!("swagger-ui.css")),
    ("favicon-32x32.png", "image/png", swagger_ui!("favicon-32x32.png")),
    // Swagger UI is Apache-2.0: its licence travels with the copy.
    ("swagger-ui-LICENSE.txt", "text/plain; charset=utf-8", swagger_ui!("LICENSE")),
];

const PAGE: &[u8] = include_bytes!("../../docs/api/index.html");

/// Only this server's own files and API; `data:` and `blob:` images are Swagger UI's icons and the images an
/// operation answers with (stylize).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new().route("/docs", get(page)).route("/docs/{file}", get(asset))
}

async fn page() -> Response {
    file("text/html; charset=utf-8", PAGE, "no-cache")
}

async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    let (_, content_type, bytes) = ASSETS.iter().find(|(file, _, _)| *file == name).ok_or_else(|| {
        let names: Vec<&str> = ASSETS.iter().map(|(file, _, _)| *file).collect();
        ApiError::not_found(format!("/docs has no file `{name}`; its files: {}", names.join(", ")))
    })?;
    // The files change only with the binary; an hour keeps a reload after an upgrade from showing old ones long.
    Ok(file(content_type, bytes, "public, max-age=3600"))
}

fn file(content_type: &'static str, bytes: &'static [u8], cache: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (HeaderName::from_static("referrer-policy"), HeaderValue::from_static("no-referrer")),
        ],
        bytes,
    )
        .into_response()
}
