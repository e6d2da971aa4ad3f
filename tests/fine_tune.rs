//! Fine-tuning and versions, end to end: the real `ember train` / `ember eval` binary on real photos, a real server
//! that notices the new version and swaps to it under load, and bad datasets that leave the repository alone.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{photo, TempRepo, TestServer};
use serde_json::Value;

fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember")).args(args).output().expect("ember runs")
}

/// Every path under `dir` (not following links), to prove a failed run changed nothing.
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path.clone());
            }
            paths.push(path);
        }
    }
    paths.sort();
    paths
}

/// An image folder of two classes made from two photos: crops and mirror images of chelsea (`cat`) and coffee
/// (`cup`).
fn two_class_folder(root: &Path) -> PathBuf {
    let data = root.join("pets");
    for (class, file) in [("cat", "chelsea.png"), ("cup", "coffee.png")] {
        let dir = data.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        let image = ::image::DynamicImage::from(::image::load_from_memory(&photo(file)).unwrap().to_rgb8());
        let (w, h) = (image.width(), image.height());
        for (i, (x, y)) in [(0, 0), (w / 8, h / 8), (w / 4, 0), (0, h / 4)].into_iter().enumerate() {
            let crop = image.crop_imm(x, y, w * 3 / 4, h * 3 / 4);
            crop.save(dir.join(format!("{i}.png"))).unwrap();
            crop.fliph().save(dir.join(format!("{i}_mirrored.jpg"))).unwrap();
        }
    }
    data
}

/// A run of seconds: the new head only, at 64 px (add `--epochs`).
const SMALL_RUN: [&str; 9] = [
    "--image-size",
    "64",
    "--batch-size",
    "4",
    "--freeze-backbone",
    "--learning-rate",
    "0.01",
    "--validation-split",
    "0.25",
];

async fn classify(server: &TestServer, client: &reqwest::Client, file: &str) -> (u16, Value) {
    let response = client
        .post(server.url("/v1/models/mobilenet_v2/classify"))
        .header("content-type", common::content_type_of(file))
        .body(photo(file))
        .send()
        .await
        .expect("server answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn wait_for_version(server: &TestServer, version: u64) -> Value {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, body) = classify(server, &client, "chelsea.png").await;
        if status == 200 && body["version"] == version {
            return body;
        }
        assert!(Instant::now() < deadline, "still not serving version {version}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_publishes_a_new_version_onto_new_labels_and_the_running_server_swaps_to_it() {
    let repo = TempRepo::mobilenet(&[]);
    let scratch = tempfile::tempdir().unwrap();
    let data = two_class_folder(scratch.path());
    let server = TestServer::start_ready(repo.path(), &["--watch-interval-ms", "200"]).await;

    let repo_arg = repo.path().to_str().unwrap();
    let mut args = vec!["train", "--model-repo", repo_arg, "--model", "mobilenet_v2", "--data", data.to_str().unwrap()];
    args.extend(SMALL_RUN);
    args.extend(["--epochs", "3"]);
    let output = ember(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("published mobilenet_v2 version 2"), "{stdout}");
    let version_dir = repo.path().join("mobilenet_v2/2");
    // The base version's formats: model.onnx carried (the trained weights in its graph, its head two wide),
    // model.pt2 not (it needs a compiler), and the run says so.
    for file in ["model.pt", "model.onnx", "metrics.json", "settings.json", "labels.txt", "version.toml"] {
        assert!(version_dir.join(file).is_file(), "version 2 lacks {file}");
    }
    assert!(!version_dir.join("model.pt2").exists());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("model.onnx: the base version's graph with the") && stderr.contains("model.pt2: not carried"),
        "{stderr}"
    );
    let metrics: Value = serde_json::from_slice(&std::fs::read(version_dir.join("metrics.json")).unwrap()).unwrap();
    let written: Vec<(&str, bool)> = metrics["formats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["format"].as_str().unwrap(), f["written"].as_bool().unwrap()))
        .collect();
    assert_eq!(written, [("torchscript", true), ("onnx", true), ("aoti", false)], "{metrics}");
    assert_eq!(metrics["data"]["details"]["classes"], serde_json::json!(["cat", "cup"]));
    assert_eq!(metrics["history"].as_array().unwrap().len(), 3, "one validation per epoch: {metrics}");

    // The server notices version 2 and answers with its labels, at its training size.
    let answer = wait_for_version(&server, 2).await;
    assert_eq!(answer["predictions"][0]["label"], "cat", "{answer}");
    assert_eq!(answer["predictions"].as_array().unwrap().len(), 2, "two labels now: {answer}");
    let coffee = classify(&server, &reqwest::Client::new(), "coffee.png").await.1;
    assert_eq!(coffee["predictions"][0]["label"], "cup", "{coffee}");
    let info: Value = reqwest::get(server.url("/v1/models/mobilenet_v2")).await.unwrap().json().await.unwrap();
    assert_eq!((info["versions"].clone(), info["served_version"].clone()), (serde_json::json!([1, 2]), 2.into()));
    assert_eq!(info["format"], "onnx", "{info}");
    // Version 2's carried graph answers as its model.pt: the same folder served as TorchScript under another name.
    let copy = repo.path().join("mobilenet_v2_torchscript");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(repo.path().join("mobilenet_v2/labels.txt"), copy.join("labels.txt")).unwrap();
    let toml = std::fs::read_to_string(repo.path().join("mobilenet_v2/model.toml")).unwrap();
    let toml =
        toml.replace("default = true", "default = false").replace("format = \"auto\"", "format = \"torchscript\"");
    std::fs::write(copy.join("model.toml"), toml).unwrap();
    std::os::unix::fs::symlink(&version_dir, copy.join("1")).unwrap();
    let reload = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for file in ["chelsea.png", "coffee.png"] {
        let onnx = classify(&server, &reload, file).await.1;
        let torchscript = loop {
            let response = reload
                .post(server.url("/v1/models/mobilenet_v2_torchscript/classify"))
                .header("content-type", "image/png")
                .body(photo(file))
                .send()
                .await
                .unwrap();
            if response.status() == 200 {
                break response.json::<Value>().await.unwrap();
            }
            assert!(Instant::now() < deadline, "the TorchScript copy never served");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for (a, b) in onnx["predictions"].as_array().unwrap().iter().zip(torchscript["predictions"].as_array().unwrap())
        {
            assert_eq!(a["label"], b["label"], "{onnx} vs {torchscript}");
            assert!(
                (a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-4,
                "{onnx} vs {torchscript}"
            );
        }
    }

    // ember eval measures any version with the same metric.
    let output =
        ember(&["eval", "--model-repo", repo_arg, "--model", "mobilenet_v2", "--data", data.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((report["version"].clone(), report["evaluation"]["examples"].clone()), (2.into(), 16.into()));
    assert!(report["evaluation"]["accuracy"].as_f64().unwrap() >= 0.75, "{report}");
}

/// A file name and its contents.
type NamedBytes<'a> = (&'a str, &'a [u8]);

#[test]
fn bad_datasets_are_refused_with_the_reason_and_leave_the_repository_as_it_was() {
    let repo = TempRepo::mobilenet(&[]);
    repo.add("sentiment", &[]);
    let scratch = tempfile::tempdir().unwrap();
    let folder = |name: &str, classes: &[(&str, &[NamedBytes])]| {
        let dir = scratch.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (class, files) in classes {
            std::fs::create_dir_all(dir.join(class)).unwrap();
            for (file, bytes) in *files {
                std::fs::write(dir.join(class).join(file), bytes).unwrap();
            }
        }
        dir
    };
    let chelsea = photo("chelsea.png");
    let empty = folder("empty", &[]);
    let one_class = folder("one", &[("cat", &[("a.png", &chelsea), ("b.png", &chelsea)])]);
    let unreadable =
        folder("broken", &[("cat", &[("a.png", &chelsea)]), ("cup", &[("oops.jpg", b"this is not a JPEG")])]);
    let csv = scratch.path().join("reviews.csv");
    std::fs::write(&csv, "text,label\ngreat film,positive\nawful,\n").unwrap();
    let jsonl = scratch.path().join("reviews.jsonl");
    std::fs::write(&jsonl, "{\"text\": \"great\", \"label\": \"positive\"}\n{\"label\": \"negative\"}\n").unwrap();
    let before = listing(repo.path());
    let cases: [(&str, &Path, &str); 6] = [
        ("mobilenet_v2", &empty, "holds no class folders"),
        ("mobilenet_v2", &one_class, "only one class (`cat`)"),
        ("mobilenet_v2", &unreadable, "oops.jpg"),
        ("mobilenet_v2", &scratch.path().join("missing"), "does not exist"),
        ("sentiment", &csv, "line 3: `label` is missing"),
        ("sentiment", &jsonl, "line 2: `text` is missing"),
    ];
    for (model, data, expected) in cases {
        let output = ember(&[
            "train",
            "--model-repo",
            repo.path().to_str().unwrap(),
            "--model",
            model,
            "--data",
            data.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{} trained", data.display());
        assert!(stderr.contains(expected), "{}: expected `{expected}` in: {stderr}", data.display());
        assert_eq!(listing(repo.path()), before, "{} changed the repository", data.display());
    }
}

#[test]
fn an_interrupted_run_leaves_no_version_behind() {
    let repo = TempRepo::mobilenet(&[]);
    let scratch = tempfile::tempdir().unwrap();
    let data = two_class_folder(scratch.path());
    let before = listing(repo.path());
    let mut args = vec![
        "train",
        "--model-repo",
        repo.path().to_str().unwrap(),
        "--model",
        "mobilenet_v2",
        "--data",
        data.to_str().unwrap(),
    ];
    args.extend(SMALL_RUN);
    args.extend(["--epochs", "1000"]);
    let child = Command::new(env!("CARGO_BIN_EXE_ember")).args(&args).stderr(Stdio::piped()).spawn().unwrap();
    // Interrupt once it has staged its version and is training.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_dir(repo.path().join("mobilenet_v2"))
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".partial"))
    {
        assert!(Instant::now() < deadline, "the run never started staging");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("cancelled"), "{stderr}");
    assert_eq!(listing(repo.path()), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_under_load_loses_no_request_and_a_broken_version_or_a_pin_is_handled() {
    let repo = TempRepo::mobilenet(&[]);
    let server = Arc::new(TestServer::start_ready(repo.path(), &["--watch-interval-ms", "100"]).await);
    let model_dir = repo.path().join("mobilenet_v2");
    let built = common::models_dir().join("mobilenet_v2/1/model.pt");
    // Publishes a version the way `ember train` does: complete in a hidden folder, then renamed into place.
    let publish = |version: u64, model_pt: Option<&Path>| {
        let staging = model_dir.join(format!(".staging-{version}"));
        std::fs::create_dir_all(&staging).unwrap();
        match model_pt {
            Some(source) => std::os::unix::fs::symlink(source, staging.join("model.pt")).unwrap(),
            None => std::fs::write(staging.join("model.pt"), b"not TorchScript").unwrap(),
        }
        std::fs::rename(&staging, model_dir.join(version.to_string())).unwrap();
    };

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (server, stop) = (Arc::clone(&server), Arc::clone(&stop));
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut answers = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let (status, body) = classify(&server, &client, "chelsea.png").await;
                    answers.push((status, body["version"].as_u64()));
                }
                answers
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(2, Some(&built));
    wait_for_version(&server, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        let answers = client.await.unwrap();
        assert!(answers.iter().all(|(status, _)| *status == 200), "a request failed during the swap: {answers:?}");
        // Each client's requests follow one another: once one was answered by version 2, none goes back to 1.
        let versions: Vec<u64> = answers.iter().filter_map(|(_, v)| *v).collect();
        let first_new = versions.iter().position(|&v| v == 2).expect("version 2 answered");
        assert!(first_new > 0 && versions[first_new..].iter().all(|&v| v == 2), "{versions:?}");
    }

    // A version that cannot load is reported, and version 2 keeps serving.
    publish(3, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info: Value = reqwest::get(server.url("/v1/models/mobilenet_v2")).await.unwrap().json().await.unwrap();
        if info["error"].as_str().is_some_and(|e| e.contains("3/model.pt")) {
            assert_eq!((info["served_version"].clone(), info["state"].clone()), (2.into(), "ready".into()), "{info}");
            break;
        }
        assert!(Instant::now() < deadline, "the broken version 3 was never reported: {info}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = classify(&server, &reqwest::Client::new(), "chelsea.png").await;
    assert_eq!((status, body["version"].clone()), (200, 2.into()));

    // Pinning version 1 in model.toml swaps back to it.
    let toml = std::fs::read_to_string(model_dir.join("model.toml")).unwrap();
    std::fs::write(model_dir.join("model.toml"), format!("version = 1\n{toml}")).unwrap();
    wait_for_version(&server, 1).await;
}

/// A tar.gz of every file under `dir`, named relative to its parent (as `tar czf x.tar.gz pets/` would), plus
/// `extra` raw entries.
fn tar_gz(dir: &Path, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    builder.append_dir_all(dir.file_name().unwrap(), dir).unwrap();
    for (name, data) in extra {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes()); // unchecked, as an attacker would
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

const TOKEN: &str = "s3cret-admin-token";

async fn submit(server: &TestServer, archive: Vec<u8>, settings: &str) -> reqwest::Response {
    let form = reqwest::multipart::Form::new()
        .part("data", reqwest::multipart::Part::bytes(archive).file_name("pets.tar.gz"))
        .text("settings", settings.to_string());
    reqwest::Client::new()
        .post(server.url("/admin/models/mobilenet_v2/fine-tune"))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

async fn job_until(server: &TestServer, id: u64, done: impl Fn(&Value) -> bool) -> Value {
    common::job_until(server, TOKEN, id, done).await
}

async fn admin_post(client: &reqwest::Client, server: &TestServer, path: &str) -> reqwest::Response {
    client.post(server.url(path)).bearer_auth(TOKEN).send().await.unwrap()
}

const SMALL_JOB: &str = r#"{"image_size": 64, "epochs": 3, "batch_size": 4, "freeze_backbone": true, "learning_rate": 0.01, "validation_split": 0.25}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_fine_tunes_in_the_background_behind_its_token() {
    let repo = TempRepo::mobilenet(&[]);
    let scratch = tempfile::tempdir().unwrap();
    let data = two_class_folder(scratch.path());
    // The watcher is off: the job itself must get its version served.
    let server = TestServer::start_ready(repo.path(), &["--admin-token", TOKEN, "--watch-interval-ms", "0"]).await;
    let client = reqwest::Client::new();
    let before = listing(repo.path());

    let anonymous = client.get(server.url("/admin/jobs")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    let wrong = client.get(server.url("/admin/jobs")).bearer_auth("s3cret-admin-tokeN").send().await.unwrap();
    assert_eq!(wrong.status(), 401);

    // Unsafe archives and bad settings are refused at once.
    let evil = submit(&server, tar_gz(&data, &[("../evil.txt", b"x")]), SMALL_JOB).await;
    assert_eq!(evil.status(), 400);
    assert!(evil.text().await.unwrap().contains("`../evil.txt` points outside the archive"));
    let bad_settings = submit(&server, tar_gz(&data, &[]), r#"{"epochs": 0}"#).await;
    assert_eq!(bad_settings.status(), 422);
    assert!(bad_settings.text().await.unwrap().contains("epochs must be between 1 and 1000, got 0"));

    // A dataset with one class fails its job with the reason; the repository stays as it was.
    let one_class = scratch.path().join("one");
    std::fs::create_dir_all(one_class.join("cat")).unwrap();
    std::fs::copy(data.join("cat/0.png"), one_class.join("cat/0.png")).unwrap();
    let response = submit(&server, tar_gz(&one_class, &[]), SMALL_JOB).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    let failed = job_until(&server, id, |job| job["state"] == "failed").await;
    assert!(failed["error"].as_str().unwrap().contains("only one class (`cat`)"), "{failed}");
    assert_eq!(listing(repo.path()), before);

    // A job cancelled while it runs leaves no version behind.
    let long = SMALL_JOB.replace("\"epochs\": 3", "\"epochs\": 1000");
    let id = submit(&server, tar_gz(&data, &[]), &long).await.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    job_until(&server, id, |job| job["state"] == "running" && job["progress"]["step"].as_u64() > Some(0)).await;
    let cancel = client.delete(server.url(&format!("/admin/jobs/{id}"))).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(cancel.status(), 200);
    job_until(&server, id, |job| job["state"] == "cancelled").await;
    assert_eq!(listing(repo.path()), before);

    // A good job publishes version 2, which is then served with its own labels.
    let response = submit(&server, tar_gz(&data, &[]), SMALL_JOB).await;
    assert_eq!(response.status(), 202);
    let queued = response.json::<Value>().await.unwrap();
    let id = queued["id"].as_u64().unwrap();
    // The answer tells an operator with replicas how the others come to serve it: their repository watcher.
    let repository = queued["repository"].as_str().unwrap();
    assert!(repository.starts_with(&repo.path().display().to_string()), "{queued}");
    assert!(
        repository.contains("every other server of the same repository") && repository.contains("--watch-interval-ms")
    );
    let done = job_until(&server, id, |job| job["state"] != "queued" && job["state"] != "running").await;
    assert_eq!((done["state"].clone(), done["version"].clone()), ("succeeded".into(), 2.into()), "{done}");
    assert_eq!(done["progress"]["validation"].as_array().unwrap().len(), 3, "{done}");
    // The job's result says what became of each format of version 1.
    let formats = done["formats"].as_array().unwrap();
    assert_eq!(
        formats.iter().map(|f| f["file"].as_str().unwrap()).collect::<Vec<_>>(),
        ["model.pt", "model.onnx", "model.pt2"]
    );
    assert_eq!(formats[1]["written"], true, "{done}");
    assert!(formats[2]["note"].as_str().unwrap().starts_with("not carried"), "{done}");
    let answer = wait_for_version(&server, 2).await;
    assert_eq!(answer["predictions"][0]["label"], "cat", "{answer}");
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ember_fine_tune_jobs{state=\"succeeded\"} 1"), "{metrics}");

    // publish=false saves version 3 as held: on disk and listed, not served.
    let form = reqwest::multipart::Form::new()
        .part("data", reqwest::multipart::Part::bytes(tar_gz(&data, &[])).file_name("pets.tar.gz"))
        .text("settings", SMALL_JOB.replace("\"epochs\": 3", "\"epochs\": 1"));
    let url = server.url("/admin/models/mobilenet_v2/fine-tune?publish=false");
    let response = client.post(url).bearer_auth(TOKEN).multipart(form).send().await.unwrap();
    let id = response.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    let saved = job_until(&server, id, |job| job["state"] == "succeeded").await;
    assert_eq!((saved["version"].clone(), saved["publish"].clone()), (3.into(), false.into()));
    assert_eq!(admin_post(&client, &server, "/admin/models/mobilenet_v2/reload").await.status(), 200);
    let info: Value = reqwest::get(server.url("/v1/models/mobilenet_v2")).await.unwrap().json().await.unwrap();
    assert_eq!((info["versions"].clone(), info["served_version"].clone()), (serde_json::json!([1, 2, 3]), 2.into()));

    // Unload takes the model out of service; load brings it back.
    assert_eq!(admin_post(&client, &server, "/admin/models/mobilenet_v2/unload").await.status(), 200);
    assert_eq!(classify(&server, &client, "chelsea.png").await.0, 503);
    assert_eq!(admin_post(&client, &server, "/admin/models/mobilenet_v2/load").await.status(), 200);
    let (status, reloaded) = classify(&server, &client, "chelsea.png").await;
    assert_eq!(status, 200);
    assert_same_answer(&reloaded, &answer);
}

/// The same version gives the same labels, and scores equal to float rounding: how many intra-op threads ran
/// a batch (a worker borrows idle CPUs) changes the order of its sums.
fn assert_same_answer(got: &Value, expected: &Value) {
    assert_eq!((&got["model"], &got["version"]), (&expected["model"], &expected["version"]), "{got} vs {expected}");
    let predictions = |answer: &Value| answer["predictions"].as_array().cloned().unwrap_or_default();
    let (got_predictions, expected_predictions) = (predictions(got), predictions(expected));
    assert_eq!(got_predictions.len(), expected_predictions.len(), "{got} vs {expected}");
    for (a, b) in got_predictions.iter().zip(&expected_predictions) {
        assert_eq!(a["label"], b["label"], "{got} vs {expected}");
        let (x, y) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-5 * y.abs().max(1e-3), "{got} vs {expected}");
    }
}

#[tokio::test]
async fn without_a_token_the_admin_api_is_off() {
    let repo = TempRepo::mobilenet(&[]);
    let server = TestServer::start(repo.path(), &[]);
    let response = reqwest::Client::new().get(server.url("/admin/jobs")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.text().await.unwrap().contains("the admin API is off"));
}

#[test]
fn a_new_style_trains_from_a_painting_and_photos_and_eval_measures_it() {
    let repo = TempRepo::of("style_starry_night", &[]);
    repo.add("style_features", &[]);
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("graffiti");
    std::fs::create_dir_all(data.join("content")).unwrap();
    let repo_arg = repo.path().to_str().unwrap();
    let train = |data: &Path| {
        ember(&[
            "train",
            "--model-repo",
            repo_arg,
            "--model",
            "style_starry_night",
            "--data",
            data.to_str().unwrap(),
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--image-size",
            "64",
            "--validation-split",
            "0.34",
        ])
    };
    let output = train(&data);
    assert!(String::from_utf8_lossy(&output.stderr).contains("has no style image"), "{output:?}");

    std::fs::copy(common::root().join("tests/data/styles/graffiti.png"), data.join("style.png")).unwrap();
    for file in ["chelsea.png", "coffee.png", "rocket.jpg"] {
        std::fs::write(data.join("content").join(file), photo(file)).unwrap();
    }
    let output = train(&data);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metrics: Value =
        serde_json::from_slice(&std::fs::read(repo.path().join("style_starry_night/2/metrics.json")).unwrap()).unwrap();
    let validation = &metrics["validation"];
    assert!(validation["loss"].as_f64().unwrap() < 1.0, "styled photos are nearer the painting than photos: {metrics}");
    assert!(validation["luminance_correlation"].as_f64().unwrap() > 0.5, "the photo is kept: {metrics}");

    let output =
        ember(&["eval", "--model-repo", repo_arg, "--model", "style_starry_night", "--data", data.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((report["version"].clone(), report["evaluation"]["examples"].clone()), (2.into(), 3.into()));
}

/// Stopping the server (SIGTERM) while a fine-tuning job runs cancels the job and waits for it: the process never
/// exits under a training step (libtorch torn down beneath it), and the job leaves nothing in the repository.
/// The job used to go on training after the server had stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_cancels_the_running_job_and_waits_for_it() {
    let repo = TempRepo::mobilenet(&[]);
    let scratch = tempfile::tempdir().unwrap();
    let data = two_class_folder(scratch.path());
    let server = TestServer::start_ready(repo.path(), &["--admin-token", TOKEN, "--watch-interval-ms", "0"]).await;
    let before = listing(repo.path());
    let long = SMALL_JOB.replace("\"epochs\": 3", "\"epochs\": 1000");
    let id = submit(&server, tar_gz(&data, &[]), &long).await.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    job_until(&server, id, |job| job["state"] == "running" && job["progress"]["step"].as_u64() > Some(0)).await;
    assert_ne!(listing(repo.path()), before, "a running job stages its version in the repository");
    tokio::task::spawn_blocking(move || server.stop()).await.unwrap();
    assert_eq!(listing(repo.path()), before, "the stopped job's staging folder is gone");
}
