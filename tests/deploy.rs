//! deploy/ and the Dockerfile, validated offline by deploy/validate.sh: the Kubernetes, prometheus-operator and
//! KServe manifests against their schemas (strictly: an unknown field is an error), the compose file against the
//! compose specification, Prometheus's configuration and rules with promtool (and the rules' unit tests), the
//! Grafana dashboard's and the rules' metric names against src/metrics.rs, ember's flags and EMBER_* variables
//! against this binary's --help, and the Dockerfile with hadolint. `make test` installs the tools
//! (`make deploy-tools`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs deploy/validate.sh on `deploy_dir` (and `dockerfile`, default the repository's), printing what it printed.
fn validate(deploy_dir: &Path, dockerfile: Option<&Path>) -> Output {
    let mut command = Command::new(root().join("deploy/validate.sh"));
    command.arg(deploy_dir).env("EMBER_BIN", env!("CARGO_BIN_EXE_ember"));
    if let Some(dockerfile) = dockerfile {
        command.env("DOCKERFILE", dockerfile);
    }
    let output = command.output().expect("run deploy/validate.sh");
    println!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_ne!(
        output.status.code(),
        Some(2),
        "the validation tools are missing: run `make deploy-tools` (make test does)"
    );
    output
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A copy of deploy/ in a temporary folder, removed when dropped.
struct DeployCopy(PathBuf);

impl DeployCopy {
    fn new() -> DeployCopy {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("ember-deploy-{}-{nanos}", std::process::id()));
        // The copy sits in a folder of its own, as deploy/ sits in the repository (the compose file builds `../..`).
        copy_dir(&root().join("deploy"), &dir.join("deploy"));
        DeployCopy(dir)
    }

    fn deploy(&self) -> PathBuf {
        self.0.join("deploy")
    }

    fn replace(&self, file: &str, from: &str, to: &str) {
        let path = self.deploy().join(file);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} no longer contains {from:?}: update this test");
        fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }
}

impl Drop for DeployCopy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn deploy_manifests_dockerfile_and_monitoring_validate() {
    let output = validate(&root().join("deploy"), None);
    assert!(output.status.success(), "deploy/validate.sh found problems (see its output above)");
}

#[test]
fn mistakes_in_the_manifests_are_caught() {
    let copy = DeployCopy::new();
    // A valid copy validates: the mistakes below are the only thing wrong.
    assert!(validate(&copy.deploy(), None).status.success(), "the untouched copy of deploy/ should validate");

    copy.replace("kubernetes/deployment.yaml", "readinessProbe:", "readinesProbe:");
    copy.replace("kubernetes/deployment.yaml", "replicas: 2", "replicas: two");
    copy.replace("kubernetes/servicemonitor.yaml", "path: /metrics", "pathh: /metrics");
    copy.replace("kubernetes/train-job.yaml", "--epochs=", "--epoch=");
    copy.replace("kserve/inferenceservice.yaml", "protocolVersion: v2", "protocolVersoin: v2");
    copy.replace("compose/docker-compose.yaml", "restart: unless-stopped", "restrat: unless-stopped");
    copy.replace("compose/grafana/dashboards/ember.json", "ember_queue_depth{", "ember_queue_dept{");
    copy.replace("compose/prometheus/rules.yml", "for: 1m", "for: 1 minute");
    // Without its justified ignore, hadolint asks for pinned apt versions (DL3008).
    let dockerfile = copy.0.join("Dockerfile");
    let text = fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(
        text.contains("# hadolint ignore=DL3008\n"),
        "the Dockerfile no longer has its DL3008 ignore: update this test"
    );
    fs::write(&dockerfile, text.replace("# hadolint ignore=DL3008\n", "")).unwrap();
    let output = validate(&copy.deploy(), Some(&dockerfile));
    assert!(!output.status.success(), "deploy/validate.sh accepted broken manifests");
    let text = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "containers[0].readinesProbe: unknown field",
        "spec.replicas: type",
        "spec.endpoints[0].pathh: unknown field",
        "ember train has no flag --epoch",
        "spec.predictor.model.protocolVersoin: unknown field",
        "additionalProperty\":\"restrat\"",
        "unknown metric ember_queue_dept",
        "DL3008",
    ] {
        assert!(text.contains(expected), "the output does not report {expected:?}");
    }
    for step in ["promtool check rules", "hadolint"] {
        assert!(
            text.lines().any(|line| line.starts_with("FAILED:") && line.contains(step)),
            "the output does not report {step} failing"
        );
    }
}
