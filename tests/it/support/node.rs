//! Node.js scripts of `tests/js/` and `tests/browser/`, with their npm packages.

use std::time::Duration;

/// A Node script may take this long before the test fails.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(120);

/// `dir` (relative to the repository) with its npm packages installed from its lockfile:
/// `npm ci` the first time, and again whenever the lockfile is newer than the install.
pub fn npm_installed(dir: &str) -> std::path::PathBuf {
    static INSTALLS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut done = INSTALLS.lock().unwrap_or_else(|p| p.into_inner());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    if done.iter().any(|d| d == dir) {
        return path;
    }
    let installed = path.join("node_modules/.package-lock.json");
    let fresh = installed.metadata().and_then(|m| m.modified()).ok()
        >= path
            .join("package-lock.json")
            .metadata()
            .and_then(|m| m.modified())
            .ok();
    if !installed.exists() || !fresh {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&path)
            .status()
            .expect("npm is needed for the JavaScript and browser tests (Node.js 20 and npm)");
        assert!(status.success(), "npm ci failed in {}", path.display());
    }
    done.push(dir.to_owned());
    path
}

/// Runs `node script args…` in `dir` and returns its stdout; fails the test when the script
/// fails or hangs.
pub async fn node(dir: &str, script: &str, args: &[&str]) -> String {
    let dir = npm_installed(dir);
    let child = tokio::process::Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node is needed for the JavaScript and browser tests");
    let output = tokio::time::timeout(NODE_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("node {script} did not finish in {NODE_TIMEOUT:?}"))
        .expect("node output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node {script} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    stdout
}
