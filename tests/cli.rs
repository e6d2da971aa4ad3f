//! The `ember` binary as a user or an orchestrator runs it: no LD_LIBRARY_PATH, real signals, real ports.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{content_type_of, photo};

fn ember() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
    // The rpath must be enough: a user's shell has no libtorch on its library path.
    command.env_remove("LD_LIBRARY_PATH").env("EMBER_LOG", "info");
    command
}

#[test]
fn info_reports_libtorch_devices_threads_and_models() {
    let output = ember().args(["info", "--model-repo"]).arg(common::models_dir()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("libtorch 2.11.0"), "{text}");
    assert!(text.contains("devices: cpu"), "{text}");
    assert!(text.contains("threads: intra-op="), "{text}");
    assert!(text.contains("mobilenet_v2 (image-classification, default): versions [1], serves 1"), "{text}");
}

/// Without libtorch_cuda in the binary's needed libraries, `--device cuda` would silently be unavailable.
#[test]
fn binary_links_libtorch_cuda_where_libtorch_has_it() {
    let libtorch = std::path::Path::new(env!("EMBER_LIBTORCH_DIR"));
    let output = Command::new("ldd").arg(env!("CARGO_BIN_EXE_ember")).env_remove("LD_LIBRARY_PATH").output().unwrap();
    let ldd = String::from_utf8_lossy(&output.stdout);
    assert!(!ldd.contains("not found"), "unresolved libraries without LD_LIBRARY_PATH:\n{ldd}");
    assert!(ldd.contains("libtorch_cpu.so"), "{ldd}");
    if libtorch.join("libtorch_cuda.so").exists() {
        assert!(ldd.contains("libtorch_cuda.so"), "libtorch_cuda was dropped by the linker:\n{ldd}");
    }
}

#[test]
fn openapi_subcommand_prints_the_spec() {
    let output = ember().arg("openapi").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        std::fs::read_to_string(common::root().join("openapi.yaml")).unwrap()
    );
}

/// The README's configuration reference is what the CLI itself says (`make docs` regenerates it), and every
/// flag of `ember serve --help` is in it.
#[test]
fn readme_configuration_reference_matches_the_cli() {
    let output = ember().arg("config-reference").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let reference = String::from_utf8(output.stdout).unwrap();
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("{}\n{reference}{}", ember::reference::BEGIN, ember::reference::END)),
        "README.md's configuration reference is stale: run `make docs`"
    );
    let help = String::from_utf8(ember().args(["serve", "--help"]).output().unwrap().stdout).unwrap();
    let flags: Vec<&str> = help.split_whitespace().filter(|w| w.starts_with("--") && *w != "--help").collect();
    assert!(flags.len() >= 10, "{help}");
    for flag in flags {
        let flag = flag.trim_end_matches(',');
        assert!(
            reference.contains(&format!("`{flag} ")) || reference.contains(&format!("`{flag}`")),
            "{flag} is missing"
        );
    }
}

#[test]
fn invalid_model_toml_stops_the_server_naming_file_and_key() {
    let repo = common::TempRepo::mobilenet(&[("max_delay_ms", "0\nmax_dealy_ms = 5")]);
    let output = ember().args(["serve", "--port", "0", "--model-repo"]).arg(repo.path()).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("mobilenet_v2/model.toml") && stderr.contains("max_dealy_ms"), "{stderr}");
}

struct Serving {
    child: Child,
    base: String,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ember serve --port 0` and reads the chosen port from its log.
fn serve() -> Serving {
    let mut child = ember()
        .args(["serve", "--port", "0", "--model-repo"])
        .arg(common::models_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(address) = line.split("listening on http://").nth(1) {
                let _ = tx.send(address.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    });
    let address = rx.recv_timeout(Duration::from_secs(60)).expect("ember logs its address");
    Serving { child, base: format!("http://{address}") }
}

/// SIGTERM (what Kubernetes sends) lets every request already received finish with its answer.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_answers_every_in_flight_request_then_exits_cleanly() {
    let mut serving = serve();
    let client = common::client();
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get(format!("{}/health/ready", serving.base)).send().await.map(|r| r.status()).ok()
        != Some(reqwest::StatusCode::OK)
    {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let requests: Vec<_> = (0..12)
        .map(|_| {
            let request = client
                .post(format!("{}/v1/classify", serving.base))
                .header("content-type", content_type_of("chelsea.png"))
                .body(photo("chelsea.png"));
            tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    // Twelve classifications take a few hundred ms on two workers: the signal lands while they are in flight.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let pid = serving.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    for request in requests {
        assert_eq!(request.await.unwrap().expect("answered, not cut off"), 200);
    }
    let status = serving.child.wait().unwrap();
    assert!(status.success(), "ember exited with {status}");
}
