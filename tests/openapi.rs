//! The spec holds: openapi.yaml describes exactly the routes the code serves (both ways), passes Redocly's lint,
//! is what GET /openapi.yaml serves, and Schemathesis, generating requests for every operation, finds no server
//! error and no answer that breaks it.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{client, content_type_of, documented, photo, root, run_python_check, TempRepo, TestServer, METHODS};

const TOKEN: &str = "openapi-admin-token";

/// (METHOD, path) of every `.route("path", get(..).post(..))` in src/http, read from the source: axum cannot
/// list a router's routes.
fn routed() -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    let mut files = vec![root().join("src/http")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "rs") {
            collect_routes(&std::fs::read_to_string(&path).unwrap(), &mut operations);
        }
    }
    operations
}

fn collect_routes(source: &str, operations: &mut BTreeSet<(String, String)>) {
    for (start, _) in source.match_indices(".route(") {
        let call = &source[start + ".route(".len()..];
        if !call.trim_start().starts_with('"') {
            continue;
        }
        // The call's text up to its closing parenthesis.
        let mut depth = 1;
        let end = call
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map(|(i, _)| i)
            .unwrap();
        let call = &call[..end];
        let path = call.trim_start().trim_start_matches('"').split('"').next().unwrap().to_string();
        for method in METHODS {
            let called = call
                .match_indices(&format!("{method}("))
                .any(|(i, _)| !call[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'));
            if called {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
}

#[test]
fn every_route_is_documented_and_every_documented_operation_is_routed() {
    let (documented, routed) = (documented(), routed());
    assert!(routed.len() >= 30 && documented.len() >= 30, "parsed {routed:?} and {documented:?}");
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(undocumented.is_empty(), "routes missing from openapi.yaml: {undocumented:?}");
    assert!(unrouted.is_empty(), "operations in openapi.yaml that no route serves: {unrouted:?}");
}

#[test]
fn the_route_reader_sees_methods_and_wrapped_calls() {
    let mut found = BTreeSet::new();
    collect_routes(".route(\"/a\", get(x).delete(y))\n.route(\n    \"/b/{id}\",\n    post(z),\n)", &mut found);
    let expected: BTreeSet<_> = [("GET", "/a"), ("DELETE", "/a"), ("POST", "/b/{id}")]
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(found, expected);
}

fn run(command: &mut Command) -> (bool, String) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e} (run `make test`: the setup installs it)"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// Redocly's recommended rules (less three explained in tests/openapi/redocly.yaml), with no warning left.
#[test]
fn the_spec_passes_redocly_lint() {
    let redocly = root().join("tests/openapi/node_modules/.bin/redocly");
    let (ok, output) = run(Command::new(redocly).current_dir(root()).args([
        "lint",
        "--config",
        "tests/openapi/redocly.yaml",
        "openapi.yaml",
    ]));
    // With warnings Redocly still says "valid", then "You have N warnings".
    assert!(ok && output.contains("is valid") && !output.contains("You have"), "{output}");
}

/// A repository with every default model, each version folder linked: admin calls change only the copy. Caps
/// are lowered so that generated requests stay short (beyond them is a documented 422).
fn every_model() -> TempRepo {
    let repo = TempRepo::of("mobilenet_v2", &[]);
    for model in ["sentiment", "style_starry_night", "style_graffiti", "iris"] {
        repo.add(model, &[]);
    }
    repo.add("shakespeare", &[("max_tokens_limit", "100"), ("default_max_tokens", "20")]);
    let optimisation = [("max_steps", "10"), ("default_steps", "5"), ("max_size", "128"), ("default_size", "64")];
    repo.add("style_features", &optimisation);
    repo
}

#[tokio::test(flavor = "multi_thread")]
async fn documented_operations_answer_on_a_live_server() {
    let repo = every_model();
    let server = TestServer::start_ready(repo.path(), &["--admin-token", TOKEN, "--watch-interval-ms", "0"]).await;
    let served = reqwest::get(server.url("/openapi.yaml")).await.unwrap().text().await.unwrap();
    assert_eq!(served, std::fs::read_to_string(root().join("openapi.yaml")).unwrap());
    for (method, path) in documented() {
        // Only routes that change nothing: the point is that each one is routed, not what it does.
        let path = path.replace("{name}", "mobilenet_v2").replace("{version}", "1").replace("{id}", "1");
        if path.ends_with("/unload") {
            continue;
        }
        let request = client().request(method.parse().unwrap(), server.url(&path)).bearer_auth(TOKEN);
        let response =
            request.header("content-type", content_type_of("x.png")).body(photo("chelsea.png")).send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        // A routed path may still answer 404 (an unknown job); only the fallback says "no route".
        assert!(status != 405 && !body.contains("no route for"), "{method} {path} is documented but answers {status}");
    }
}

/// Schemathesis generates requests for every operation from the spec (examples, edge cases and random data,
/// a bounded number each) and checks every answer: no 5xx, and status, content type, headers and body as the
/// spec says. The admin routes run with the token.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_spec() {
    let repo = every_model();
    let server = TestServer::start_ready(repo.path(), &["--admin-token", TOKEN, "--watch-interval-ms", "0"]).await;
    let report = tempfile::tempdir().unwrap();
    let spec = root().join("openapi.yaml");
    let mut command = Command::new(root().join(".venv/bin/schemathesis"));
    command.current_dir(report.path()).args([
        "--no-color",
        "run",
        spec.to_str().unwrap(),
        "--url",
        &server.base,
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
        "--max-examples",
        "15",
        "--seed",
        "1",
        "--header",
        &format!("Authorization: Bearer {TOKEN}"),
        "--request-timeout",
        "60",
        "--workers",
        "1",
        // Unloading a model makes every later request to it a documented 503, which the server-error check
        // counts; unload is tested in tests/fine_tune.rs and tests/kserve.rs.
        "--exclude-path-regex",
        "/unload$",
    ]);
    let (ok, output) = tokio::task::spawn_blocking(move || run(&mut command)).await.unwrap();
    assert!(ok, "schemathesis found problems:\n{output}");
}

const BROWSER_KEY: &str = "browser-0123456789abcdef0123";

/// tests/docs/browser_check.py in headless Chromium (Debian's, installed by `make test`): /docs lists every
/// operation of the served spec, and requests made from the page with "Try it out" (sentiment, generate, and
/// classify and stylize with an uploaded photo) are answered once an API key is entered under "Authorize" (401
/// before); the page reaches nothing beyond this server. The screenshot it takes is left in
/// target/test-artifacts/docs.png.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_page_works_in_a_real_browser() {
    let repo = TempRepo::of("mobilenet_v2", &[]);
    for model in ["sentiment", "shakespeare", "style_features", "style_starry_night"] {
        repo.add(model, &[]);
    }
    // With API keys: the page's requests need the key entered under "Authorize".
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keys_dir.path().join("api-keys");
    std::fs::write(&keys, format!("browser:{BROWSER_KEY}\n")).unwrap();
    let server = TestServer::start_ready(repo.path(), &["--api-keys-file", keys.to_str().unwrap()]).await;
    let artifacts = root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("docs.png").to_str().unwrap().to_string();
    run_python_check(
        "tests/docs/browser_check.py",
        vec![server.base.clone(), screenshot, "--api-key".into(), BROWSER_KEY.into()],
        "docs browser checks passed",
    )
    .await;
}
