//! The `ember` binary as a user or an orchestrator runs it: no LD_LIBRARY_PATH, real signals, real ports.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{content_type_of, photo, EmberProcess};

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

/// `workers = "auto"` follows the CPUs the process may use (its affinity mask here, as `taskset` or a cpuset
/// sets it): pinned to one CPU, mobilenet_v2 runs one worker.
#[test]
fn auto_workers_follow_the_cpus_the_process_may_use() {
    let info = |mut command: Command| {
        let output = command.args(["info", "--model-repo"]).arg(common::models_dir()).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let mobilenet = |text: &str| text.lines().find(|l| l.contains("mobilenet_v2 (")).unwrap_or_default().to_string();
    let mut taskset = Command::new("taskset");
    taskset.args(["-c", "0", env!("CARGO_BIN_EXE_ember")]);
    let pinned = info(taskset);
    assert!(pinned.contains("(cores: 1)") && mobilenet(&pinned).contains("workers 1 x 1 thread(s)"), "{pinned}");
    // Unpinned, the CPUs this test process may use.
    let cpus = std::thread::available_parallelism().unwrap().get().min(ember::cpus::MAX_WORKERS);
    let unpinned = info(ember());
    assert!(mobilenet(&unpinned).contains(&format!("workers {cpus} x 1 thread(s)")), "{unpinned}");
}

/// Whether this machine has an NVIDIA GPU, asked of the driver's own tool rather than of ember.
fn gpu_present() -> bool {
    Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).contains("GPU "))
}

/// libtorch_cuda and the CUDA libraries it pulls in (about 250 MiB resident) are not linked: they are mapped
/// only where a GPU can use them, and `ember info` says which.
#[tokio::test(flavor = "multi_thread")]
async fn cuda_is_loaded_only_where_a_gpu_is() {
    let output = Command::new("ldd").arg(env!("CARGO_BIN_EXE_ember")).env_remove("LD_LIBRARY_PATH").output().unwrap();
    let ldd = String::from_utf8_lossy(&output.stdout);
    assert!(!ldd.contains("not found"), "unresolved libraries without LD_LIBRARY_PATH:\n{ldd}");
    assert!(ldd.contains("libtorch_cpu.so") && !ldd.contains("libtorch_cuda.so"), "{ldd}");

    let gpu = gpu_present();
    let info = ember().args(["info", "--model-repo"]).arg(common::models_dir()).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert_eq!(info.contains("cuda: loaded from"), gpu, "{info}");

    let repo = common::TempRepo::mobilenet(&[]);
    let serving = EmberProcess::serve(repo.path(), &[]);
    serving.wait_ready().await;
    let answer = common::client()
        .post(format!("{}/v1/classify", serving.base))
        .header("content-type", content_type_of("chelsea.png"))
        .body(photo("chelsea.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", serving.child.id())).unwrap();
    assert_eq!(maps.contains("libtorch_cuda.so"), gpu, "libtorch_cuda mapped: {}", !gpu);
}

/// `--device cuda` is an operator's explicit ask: without a GPU the server refuses to start and says why; with
/// one, every answer matches the CPU's.
#[tokio::test(flavor = "multi_thread")]
async fn device_cuda_serves_on_a_gpu_and_stops_clearly_without_one() {
    let repo = common::TempRepo::mobilenet(&[]);
    if !gpu_present() {
        let output = ember()
            .args(["serve", "--port", "0", "--grpc-port", "0", "--device", "cuda", "--model-repo"])
            .arg(repo.path())
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("--device: device cuda:0 was asked for") && stderr.contains("--device cpu"),
            "{stderr}"
        );
        return;
    }
    let (cpu, gpu) = (
        EmberProcess::serve(repo.path(), &["--device", "cpu"]),
        EmberProcess::serve(repo.path(), &["--device", "cuda"]),
    );
    cpu.wait_ready().await;
    gpu.wait_ready().await;
    for reference in common::references() {
        let mut answers = Vec::new();
        for serving in [&cpu, &gpu] {
            let response = common::client()
                .post(format!("{}/v1/classify?top_k=1", serving.base))
                .header("content-type", content_type_of(&reference.file))
                .body(photo(&reference.file))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            answers.push(response.json::<serde_json::Value>().await.unwrap()["predictions"][0].clone());
        }
        assert_eq!(answers[0]["label"], answers[1]["label"], "{}", reference.file);
        let (a, b) = (answers[0]["score"].as_f64().unwrap(), answers[1]["score"].as_f64().unwrap());
        assert!((a - b).abs() < 1e-2, "{}: cpu {a} cuda {b}", reference.file);
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
    let output =
        ember().args(["serve", "--port", "0", "--grpc-port", "0", "--model-repo"]).arg(repo.path()).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("mobilenet_v2/model.toml") && stderr.contains("max_dealy_ms"), "{stderr}");
}

/// A repository that is not there stops the server with one line that names it and the OS error, once.
#[test]
fn a_missing_model_repository_stops_the_server_saying_so_once() {
    let output = ember()
        .args(["serve", "--port", "0", "--grpc-port", "0", "--model-repo", "/nonexistent-ember-repo"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot read the model repository /nonexistent-ember-repo"), "{stderr}");
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
}

/// SIGTERM (what Kubernetes sends) lets every request already received finish with its answer.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_answers_every_in_flight_request_then_exits_cleanly() {
    let mut serving = EmberProcess::serve(&common::models_dir(), &[]);
    serving.wait_ready().await;
    let client = common::client();
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

/// SIGTERM while models still load (a pod stopped during a rollout): ember waits for the loads in progress, stops
/// their workers, and exits cleanly. It used to exit under the loading threads: libtorch was torn down beneath
/// them, and ember died with SIGSEGV or a heap-corruption abort in 11 of 12 tries.
#[test]
fn sigterm_while_models_load_exits_cleanly() {
    for attempt in 0..3 {
        let mut serving = EmberProcess::serve(&common::models_dir(), &[]);
        // Every default model takes about a second to load: the signal lands while they load.
        std::thread::sleep(Duration::from_millis(100 + 200 * attempt));
        let pid = serving.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = serving.child.wait().unwrap();
        assert!(status.success(), "attempt {attempt}: ember exited with {status}");
    }
}

/// Models loaded at start that need more than --model-memory-budget stop the server, naming the budget and what
/// each model measured; it never turns ready.
#[test]
fn start_models_over_the_memory_budget_stop_the_server_naming_both() {
    let repo = common::TempRepo::mobilenet(&[]);
    repo.add("iris", &[]);
    let mut serving = ember()
        .args(["serve", "--port", "0", "--grpc-port", "0", "--model-memory-budget", "8MiB", "--model-repo"])
        .arg(repo.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = serving.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = serving.kill();
            panic!("the server went on past a start-up over its budget");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut serving.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("more than --model-memory-budget 8 MiB"), "{stderr}");
    assert!(stderr.contains("mobilenet_v2 "), "{stderr}");
}
