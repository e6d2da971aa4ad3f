//! Serving behaviour under load and at the edges, each test on a server with its own settings:
//! batching across callers, admission control, deadlines, readiness, body limits, what a model costs.

mod common;

use std::time::{Duration, Instant};

use common::{content_type_of, error_of, metric_at, photo, EmberProcess, TempRepo, TestServer};
use serde_json::Value;

/// 32 callers at once are all answered correctly, and the batcher actually combined requests.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_are_all_answered_and_batched() {
    let repo = TempRepo::mobilenet(&[]);
    let server = TestServer::start_ready(repo.path(), &[]).await;
    let requests = (0..32).map(|i| {
        let photo = if i % 2 == 0 { "chelsea.png" } else { "coffee.png" };
        let server = &server;
        async move { (photo, server.post_image("/v1/classify?top_k=1", photo).await.json::<Value>().await.unwrap()) }
    });
    for (photo, body) in futures_util::future::join_all(requests).await {
        let top1 = body["predictions"][0]["label"].as_str().unwrap_or_default().to_string();
        let expected = if photo == "chelsea.png" { "Egyptian cat" } else { "espresso" };
        assert_eq!(top1, expected, "{photo}: {body}");
    }
    let batches = server.metric("ember_batch_size_count{model=\"mobilenet_v2\"}").await.unwrap();
    let singles = server.metric("ember_batch_size_bucket{model=\"mobilenet_v2\",le=\"1\"}").await.unwrap();
    let images = server.metric("ember_batch_size_sum{model=\"mobilenet_v2\"}").await.unwrap();
    assert_eq!(images, 32.0);
    assert!(batches > singles, "no batch larger than one: {batches} batches, {singles} of size 1");
    assert!(batches < 32.0, "32 requests took {batches} batches");
}

/// A full queue answers 429 with Retry-After at once; nothing hangs; the admitted requests succeed.
#[tokio::test(flavor = "multi_thread")]
async fn overloaded_queue_answers_429_quickly() {
    let repo = TempRepo::mobilenet(&[("workers", "1"), ("max_batch_size", "1"), ("queue_capacity", "2")]);
    let server = TestServer::start_ready(repo.path(), &[]).await;
    let requests = (0..24).map(|_| {
        let server = &server;
        async move {
            let started = Instant::now();
            let response = server.post_image("/v1/classify", "china.jpg").await;
            (response, started.elapsed())
        }
    });
    let started = Instant::now();
    let results = futures_util::future::join_all(requests).await;
    assert!(started.elapsed() < Duration::from_secs(30), "the burst took {:?}", started.elapsed());
    let (mut ok, mut refused) = (0, 0);
    for (response, elapsed) in results {
        match response.status().as_u16() {
            200 => ok += 1,
            429 => {
                refused += 1;
                assert_eq!(response.headers()["retry-after"], "1");
                assert!(elapsed < Duration::from_secs(2), "a 429 took {elapsed:?}");
                let (_, kind, message) = error_of(response).await;
                assert_eq!(kind, "overloaded");
                assert!(message.contains("queue_capacity"), "{message}");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(refused > 0, "24 simultaneous requests never filled a queue of 2");
    assert!(ok >= 3, "only {ok} requests were served");
}

/// A request that cannot be answered within --request-timeout-ms gets a 504, not a hang.
#[tokio::test(flavor = "multi_thread")]
async fn request_past_its_deadline_answers_504() {
    let repo = TempRepo::mobilenet(&[]);
    let server = TestServer::start_ready(repo.path(), &["--request-timeout-ms", "1"]).await;
    let (status, kind, message) = error_of(server.post_image("/v1/classify", "chelsea.png").await).await;
    assert_eq!((status, kind.as_str()), (504, "timeout"), "{message}");
    assert!(message.contains("--request-timeout-ms"), "{message}");
}

/// Until every worker has loaded and warmed up the model, readiness is 503 and requests get 503.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_is_503_until_warm_up_finishes() {
    // Many warm-up passes stretch the warm-up to a second or more, so the window is observable.
    let repo = TempRepo::mobilenet(&[("workers", "1"), ("max_batch_size", "1"), ("warmup_runs", "60")]);
    let server = TestServer::start(repo.path(), &[]);
    let live = reqwest::get(server.url("/health/live")).await.unwrap();
    assert_eq!(live.status(), 200, "liveness answers while models load");
    let (status, kind, message) = error_of(reqwest::get(server.url("/health/ready")).await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (503, "unavailable"));
    assert!(message.contains("mobilenet_v2") && message.contains("loading"), "{message}");
    let (status, _, message) = error_of(server.post_image("/v1/classify", "chelsea.png").await).await;
    assert_eq!(status, 503, "{message}");
    let model: Value = reqwest::get(server.url("/v1/models/mobilenet_v2")).await.unwrap().json().await.unwrap();
    assert_eq!(model["state"], "loading");
    // The same over the Open Inference Protocol (KServe v2).
    let status = |path: &'static str| {
        let url = server.url(path);
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/v2/health/live").await, 200);
    assert_eq!(status("/v2/health/ready").await, 503);
    assert_eq!(status("/v2/models/mobilenet_v2/ready").await, 503);

    server.wait_ready().await;
    assert_eq!(server.post_image("/v1/classify", "chelsea.png").await.status(), 200);
    assert_eq!(status("/v2/health/ready").await, 200);
    let ready: Value = reqwest::get(server.url("/v2/models/mobilenet_v2/ready")).await.unwrap().json().await.unwrap();
    assert_eq!(ready, serde_json::json!({"name": "mobilenet_v2", "version": "1", "ready": true}));
    assert_eq!(status("/v2/models/mobilenet_v2/versions/1/ready").await, 200);
    assert_eq!(status("/v2/models/mobilenet_v2/versions/7/ready").await, 404);
    assert_eq!(status("/v2/models/nothing/ready").await, 404);
    let metadata: Value = reqwest::get(server.url("/v2")).await.unwrap().json().await.unwrap();
    assert_eq!(metadata["name"], "ember");
}

#[tokio::test(flavor = "multi_thread")]
async fn body_over_the_limit_answers_413() {
    let repo = TempRepo::mobilenet(&[]);
    let server = TestServer::start_ready(repo.path(), &["--max-body-bytes", "100000"]).await;
    // coffee.png is 466 kB; china.jpg (197 kB) streamed without Content-Length checks the running count too.
    let (status, kind, message) = error_of(server.post_image("/v1/classify", "coffee.png").await).await;
    assert_eq!((status, kind.as_str()), (413, "payload_too_large"));
    assert!(message.contains("100000") && message.contains("--max-body-bytes"), "{message}");

    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        common::photo("china.jpg").chunks(16384).map(|c| Ok(c.to_vec())).collect();
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    assert_eq!(error_of(server.post_body("/v1/classify", "image/jpeg", streamed).await).await.0, 413);
    // A body under the limit still goes through.
    let mut small = Vec::new();
    image::RgbImage::from_fn(320, 240, |x, y| image::Rgb([x as u8, y as u8, 128]))
        .write_to(&mut std::io::Cursor::new(&mut small), image::ImageFormat::Jpeg)
        .unwrap();
    assert!(small.len() < 100_000);
    assert_eq!(server.post_body("/v1/classify", "image/jpeg", small).await.status(), 200);
}

/// A model whose files are broken is reported by name; it has no version that loads, so the replica does not
/// wait for it (readiness: every model with a loadable version serves).
#[tokio::test(flavor = "multi_thread")]
async fn a_model_that_fails_to_load_is_reported() {
    let repo = tempfile::tempdir().unwrap();
    let model = repo.path().join("broken");
    std::fs::create_dir_all(model.join("1")).unwrap();
    std::fs::write(
        model.join("model.toml"),
        std::fs::read_to_string(common::models_dir().join("mobilenet_v2/model.toml")).unwrap(),
    )
    .unwrap();
    std::fs::copy(common::models_dir().join("mobilenet_v2/labels.txt"), model.join("labels.txt")).unwrap();
    std::fs::write(model.join("1/model.pt"), b"this is not TorchScript").unwrap();
    let server = TestServer::start(repo.path(), &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = loop {
        let info: Value = reqwest::get(server.url("/v1/models/broken")).await.unwrap().json().await.unwrap();
        if info["state"] != "loading" || Instant::now() > deadline {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(info["state"], "failed");
    assert!(info["error"].as_str().unwrap().contains("model.pt"), "{info}");
    assert_eq!(reqwest::get(server.url("/health/ready")).await.unwrap().status(), 200);
    let (status, kind, _) = error_of(server.post_image("/v1/classify", "chelsea.png").await).await;
    assert_eq!((status, kind.as_str()), (503, "unavailable"));
}

/// What a model costs is measured when it loads (the same figure in GET /v1/models/{name} and in
/// ember_model_resident_bytes), when a request last used it is kept, and every load is counted with its reason.
/// A process of its own: the figure is the process's memory growth, which the other tests' servers would blur.
#[tokio::test(flavor = "multi_thread")]
async fn a_model_reports_what_it_costs_and_when_it_was_last_used() {
    const TOKEN: &str = "cost-admin-token";
    let repo = TempRepo::mobilenet(&[]);
    repo.add("iris", &[]);
    let server = EmberProcess::serve(repo.path(), &["--admin-token", TOKEN, "--watch-interval-ms", "0"]);
    server.wait_ready().await;
    let client = common::client();
    let describe = |name: &'static str| {
        let request = client.get(format!("{}/v1/models/{name}", server.base));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let metric = |series: &'static str| metric_at(&server.base, series);
    let mobilenet = describe("mobilenet_v2").await;
    let bytes = mobilenet["resident_bytes"].as_u64().unwrap_or_else(|| panic!("{mobilenet}"));
    // Its weights are 14 MB; prepacked for the CPU and warmed at every batch size it measured 79-92 MiB alone.
    assert!((20 << 20..1 << 30).contains(&bytes), "mobilenet_v2 costs {bytes} bytes: {mobilenet}");
    let iris = describe("iris").await["resident_bytes"].as_u64().unwrap();
    assert!(iris < bytes, "iris (a 3 KB graph) measured {iris} bytes, mobilenet_v2 {bytes}");
    assert!(mobilenet["last_used"].is_null(), "{mobilenet}");
    assert_eq!(metric("ember_model_resident_bytes{model=\"mobilenet_v2\"}").await, Some(bytes as f64));
    assert_eq!(metric("ember_model_loads_total{model=\"mobilenet_v2\",reason=\"start\"}").await, Some(1.0));

    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let classify = client
        .post(format!("{}/v1/classify", server.base))
        .header("content-type", content_type_of("chelsea.png"))
        .body(photo("chelsea.png"));
    assert_eq!(classify.send().await.unwrap().status(), 200);
    let used = describe("mobilenet_v2").await["last_used"].as_u64().unwrap();
    assert!((before..before + 60).contains(&used), "last used at {used}, the request was sent at {before}");
    assert!(describe("iris").await["last_used"].is_null(), "iris was not asked");

    let admin = |path: &str| client.post(format!("{}{path}", server.base)).bearer_auth(TOKEN).send();
    assert_eq!(admin("/admin/models/mobilenet_v2/reload").await.unwrap().status(), 200);
    assert_eq!(metric("ember_model_loads_total{model=\"mobilenet_v2\",reason=\"admin\"}").await, Some(1.0));
    assert!(describe("mobilenet_v2").await["resident_bytes"].as_u64().is_some());
    assert_eq!(admin("/admin/models/mobilenet_v2/unload").await.unwrap().status(), 200);
    assert!(describe("mobilenet_v2").await["resident_bytes"].is_null());
    assert_eq!(metric("ember_model_resident_bytes{model=\"mobilenet_v2\"}").await, None);
}

/// Under --model-memory-budget an on-demand model loads on its first request (every request arriving meanwhile
/// shares that load), the least recently used idle ones are evicted to make room, and a load that fails backs
/// off instead of being retried by every request.
#[tokio::test(flavor = "multi_thread")]
async fn on_demand_models_load_on_first_use_and_the_least_recently_used_is_evicted() {
    let copies = ["mob_a", "mob_b", "mob_c", "mob_d"];
    let repo = TempRepo::of("iris", &[]);
    for name in copies.iter().chain(&["broken"]) {
        repo.add_as("mobilenet_v2", name, &[("format", "\"torchscript\"")]).on_demand(name);
    }
    // broken's version folder is its own, holding a model file that is not one.
    let broken = repo.path().join("broken/1");
    std::fs::remove_file(&broken).unwrap();
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("model.pt"), b"not a model").unwrap();
    // A copy of mobilenet_v2 measures 80-130 MiB, by what the allocator and earlier loads left: two copies always
    // fit beside iris, four never do. Which ones are evicted is checked against the order of use, whatever fits.
    let server = EmberProcess::serve(repo.path(), &["--model-memory-budget", "300MiB", "--watch-interval-ms", "0"]);
    server.wait_ready().await;
    let client = common::client();
    let metric = |series: String| {
        let base = server.base.clone();
        async move { metric_at(&base, &series).await }
    };
    let state = |name: &'static str| {
        let request = client.get(format!("{}/v1/models/{name}", server.base));
        async move {
            let model = request.send().await.unwrap().json::<Value>().await.unwrap();
            (model["state"].as_str().unwrap().to_string(), model["load"].as_str().unwrap().to_string())
        }
    };
    assert_eq!(state("mob_a").await, ("unloaded".into(), "on-demand".into()), "ready without loading mob_a");
    let ready = client.get(format!("{}/v2/models/mob_a/ready", server.base)).send().await.unwrap();
    assert_eq!(ready.status(), 200, "an on-demand model is available");
    let classify = |name: &str| {
        client
            .post(format!("{}/v1/models/{name}/classify", server.base))
            .header("content-type", content_type_of("chelsea.png"))
            .body(photo("chelsea.png"))
            .send()
    };
    let together = futures_util::future::join_all((0..4).map(|_| classify("mob_a"))).await;
    for answer in together {
        let answer = answer.unwrap();
        assert_eq!(answer.status(), 200);
        assert!(answer.headers()["server-timing"].to_str().unwrap().starts_with("load;dur="), "it waited for the load");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["predictions"][0]["label"], "Egyptian cat", "{body}");
    }
    let loads = |name: &str| metric(format!("ember_model_loads_total{{model=\"{name}\",reason=\"demand\"}}"));
    assert_eq!(loads("mob_a").await, Some(1.0), "four requests shared one load");
    let hit = classify("mob_a").await.unwrap();
    assert!(!hit.headers().contains_key("server-timing"), "a loaded model answers without a load");

    // Used in this order, least recently used first: each eviction takes the least recently used loaded copies.
    let loaded = || async {
        let mut names = Vec::new();
        for name in copies {
            if state(name).await.0 == "ready" {
                names.push(name);
            }
        }
        names
    };
    let mut recency = vec!["mob_a"];
    let (mut before, mut evictions, mut choices) = (loaded().await, 0, 0);
    for name in ["mob_b", "mob_c", "mob_a", "mob_d", "mob_b", "mob_a", "mob_c", "mob_d"] {
        assert_eq!(classify(name).await.unwrap().status(), 200, "{name}");
        let now = loaded().await;
        assert!(now.contains(&name), "{name} serves: {now:?}");
        let mut evicted: Vec<&str> = before.iter().copied().filter(|m| !now.contains(m)).collect();
        let candidates: Vec<&str> = recency.iter().copied().filter(|m| before.contains(m) && *m != name).collect();
        let mut least_recent = candidates[..evicted.len()].to_vec();
        evicted.sort();
        least_recent.sort();
        assert_eq!(evicted, least_recent, "loading {name} evicted {evicted:?} of {candidates:?}");
        choices += usize::from(!evicted.is_empty() && evicted.len() < candidates.len());
        evictions += evicted.len();
        recency.retain(|m| *m != name);
        recency.push(name);
        before = now;
    }
    assert!(choices > 0, "no eviction kept a more recently used copy: the budget held too few or too many");
    let mut counted = 0.0;
    for name in copies {
        counted += metric(format!("ember_model_evictions_total{{model=\"{name}\"}}")).await.unwrap_or(0.0);
    }
    assert_eq!(counted, evictions as f64, "ember_model_evictions_total counts each eviction");
    assert_eq!(state("iris").await.0, "ready", "a start model is never evicted");
    assert_eq!(metric("ember_model_memory_budget_bytes".into()).await, Some((300u64 << 20) as f64));

    let first = classify("broken").await.unwrap();
    assert_eq!(first.status(), 503);
    let again = classify("broken").await.unwrap();
    assert_eq!(again.status(), 503);
    assert!(again.headers().contains_key("retry-after"), "{:?}", again.headers());
    let body: Value = again.json().await.unwrap();
    let message = body["error"].as_str().unwrap_or_else(|| panic!("{body}"));
    assert!(message.contains("failed to load") && message.contains("next try"), "{message}");
    assert_eq!(metric("ember_model_load_failures_total{model=\"broken\"}".into()).await, Some(1.0), "backed off");
    let health = client.get(format!("{}/health/ready", server.base)).send().await.unwrap();
    assert_eq!(health.status(), 200, "an on-demand model never takes the replica out of readiness");
}

/// GET /v1/models: the measured cost of every loaded model, summed.
async fn resident_total(client: &reqwest::Client, base: &str) -> u64 {
    let models: Value = client.get(format!("{base}/v1/models")).send().await.unwrap().json().await.unwrap();
    let models = models["models"].as_array().unwrap_or_else(|| panic!("{models}"));
    models.iter().filter_map(|model| model["resident_bytes"].as_u64()).sum()
}

/// A storm over every on-demand model at once answers each request with a 200, a 429 (the model's waiting room
/// is full) or a 503 with Retry-After (no room under the budget): never a 500 or a dropped connection. Each model
/// loads once for all its requests, the measured costs stay within the budget, and the process's peak RSS stays
/// within (its RSS with no model loaded + the budget) x 1.15. Admin unload and load then keep to the budget.
#[tokio::test(flavor = "multi_thread")]
async fn a_storm_over_on_demand_models_holds_the_budget() {
    const TOKEN: &str = "storm-admin-token";
    const BUDGET: u64 = 200 << 20;
    let names = ["mob_a", "mob_b", "mob_c", "mob_d"];
    let repo = TempRepo { dir: tempfile::tempdir().unwrap() };
    for name in names {
        repo.add_as("mobilenet_v2", name, &[("format", "\"torchscript\""), ("queue_capacity", "8")]).on_demand(name);
    }
    repo.add("sentiment", &[]).on_demand("sentiment");
    let budget = BUDGET.to_string();
    let flags = ["--model-memory-budget", &budget, "--admin-token", TOKEN, "--watch-interval-ms", "0"];
    let server = EmberProcess::serve(repo.path(), &flags);
    server.wait_ready().await;
    let idle_rss = server.memory("VmRSS");
    let client = common::client();
    let classify = |name: &str| {
        let request = client
            .post(format!("{}/v1/models/{name}/classify", server.base))
            .header("content-type", content_type_of("chelsea.png"))
            .body(photo("chelsea.png"));
        async move {
            let answer = request.send().await.expect("an answer, not a dropped connection");
            let status = answer.status().as_u16();
            let retry_after = answer.headers().contains_key("retry-after");
            let body: Value = answer.json().await.unwrap();
            match status {
                200 => assert_eq!(body["predictions"][0]["label"], "Egyptian cat", "{body}"),
                503 => assert!(retry_after, "a 503 without Retry-After: {body}"),
                429 => {}
                other => panic!("{other}: {body}"),
            }
            status
        }
    };
    let storm = names.iter().cycle().take(4 * 12).map(|name| classify(name));
    let statuses = futures_util::future::join_all(storm).await;
    assert!(statuses.contains(&200), "{statuses:?}");
    // Requests that arrive together share one load; a model loads again only after it was evicted (four copies
    // of about 50 MiB each may or may not fit the 200 MiB at once, by what each load measured).
    for name in names {
        let loads = format!("ember_model_loads_total{{model=\"{name}\",reason=\"demand\"}}");
        let evictions = format!("ember_model_evictions_total{{model=\"{name}\"}}");
        let loads = metric_at(&server.base, &loads).await.unwrap_or(0.0);
        let evictions = metric_at(&server.base, &evictions).await.unwrap_or(0.0);
        assert!(loads <= 1.0 + evictions, "{name}: {loads} loads after {evictions} evictions");
    }
    assert!(resident_total(&client, &server.base).await <= BUDGET);
    let peak = server.memory("VmHWM");
    let bound = (idle_rss + BUDGET) as f64 * 1.15;
    assert!((peak as f64) <= bound, "peak RSS {} MiB over the bound {} MiB", peak >> 20, bound as u64 >> 20);

    // Admin unload frees a model's room; admin load makes room as a first request does.
    let admin = |path: String| client.post(format!("{}{path}", server.base)).bearer_auth(TOKEN).send();
    for name in names {
        let unloaded = admin(format!("/admin/models/{name}/unload")).await.unwrap();
        assert!([200, 404].contains(&unloaded.status().as_u16()), "{}", unloaded.text().await.unwrap());
    }
    assert_eq!(resident_total(&client, &server.base).await, 0, "unloaded models take nothing");
    for name in names {
        let loaded = admin(format!("/admin/models/{name}/load")).await.unwrap();
        assert_eq!(loaded.status(), 200, "{}", loaded.text().await.unwrap());
        assert!(resident_total(&client, &server.base).await <= BUDGET, "after the admin load of {name}");
    }
    assert_eq!(classify("mob_a").await, 200, "an on-demand model unloaded by the admin loads on its next request");

    // sentiment's first load reserves more than the whole budget (twice its files, about 90 MiB, and 64 MiB):
    // refused at once, not after waiting for room that cannot come.
    let asked = Instant::now();
    let text = serde_json::json!({"text": "A wonderful, moving film."});
    let refused = client.post(format!("{}/v1/models/sentiment/sentiment", server.base)).json(&text).send().await;
    let refused = refused.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let message = refused.json::<Value>().await.unwrap()["error"].as_str().unwrap().to_string();
    assert!(
        message.contains("--model-memory-budget 200 MiB") && message.contains("more than the whole budget"),
        "{message}"
    );
    assert!(asked.elapsed() < Duration::from_secs(5), "refused after {:?}", asked.elapsed());
}

/// A stream holds its model: a load that needs its room waits while it generates, every token arrives, and the
/// model is evicted for that load once the stream has ended.
#[tokio::test(flavor = "multi_thread")]
async fn an_on_demand_model_is_not_evicted_while_a_stream_generates() {
    let repo = TempRepo::of("shakespeare", &[("max_tokens_limit", "20000")]);
    repo.on_demand("shakespeare").add("sentiment", &[]).on_demand("sentiment");
    // What sentiment's first load reserves (twice its files, and 64 MiB for its warm-up: registry::budget), and
    // 1 MiB: it fits alone, never beside shakespeare.
    let files = |dir: std::path::PathBuf| {
        let sizes = std::fs::read_dir(dir).unwrap().map(|f| f.unwrap().metadata().unwrap().len());
        sizes.max().unwrap()
    };
    let sentiment = repo.path().join("sentiment");
    let tokenizer = std::fs::metadata(sentiment.join("tokenizer.json")).unwrap().len();
    let budget = (2 * (files(sentiment.join("1")) + tokenizer) + (65 << 20)).to_string();
    let server = EmberProcess::serve(repo.path(), &["--model-memory-budget", &budget, "--watch-interval-ms", "0"]);
    server.wait_ready().await;
    let client = common::client();
    let body = serde_json::json!({"prompt": "LEAR.\n", "max_tokens": 20000, "stream": true, "seed": 1});
    let url = format!("{}/v1/models/shakespeare/generate", server.base);
    let mut stream = client.post(url).json(&body).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let mut text = String::from_utf8(stream.chunk().await.unwrap().expect("a first event").to_vec()).unwrap();
    let sent = Instant::now();
    let waiting = tokio::spawn(
        client
            .post(format!("{}/v1/models/sentiment/sentiment", server.base))
            .json(&serde_json::json!({"text": "A wonderful, moving film."}))
            .send(),
    );
    while let Some(chunk) = stream.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let streamed = sent.elapsed();
    let done = text.split("event: done").nth(1).unwrap_or_else(|| panic!("no done event: {}", text.len()));
    let done: Value = serde_json::from_str(done.trim().trim_start_matches("data:").trim()).unwrap();
    assert_eq!(done["tokens"], 20000, "the stream ran to its end: {done}");
    // The stream went on long after the sentiment request was sent: that request waited for it.
    assert!(streamed > Duration::from_secs(1), "the stream ended {streamed:?} after the request: too soon to tell");

    let answer = waiting.await.unwrap().unwrap();
    let answered = sent.elapsed();
    let timing = answer.headers().get("server-timing").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    assert!(answered > streamed, "answered after {answered:?}, before the stream ended ({streamed:?})");
    assert!(timing.is_some_and(|t| t.starts_with("load;dur=")), "the answer says it waited for a load");
    assert_eq!(metric_at(&server.base, "ember_model_evictions_total{model=\"shakespeare\"}").await, Some(1.0));
}
