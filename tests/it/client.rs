//! `@tandem/client` (`clients/js/`), the package web apps embed: its own Node tests
//! (`node --test`, each starting this build's server binary on a free port) and the check of
//! its type declarations (`tsc`).

use std::time::Duration;

/// The package's tests restart servers and wait out token expiries: a few minutes at most.
const CLIENT_TESTS_TIMEOUT: Duration = Duration::from_secs(600);

async fn run(program: &str, args: &[&str]) -> String {
    let dir = crate::support::node::npm_installed("clients/js");
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(&dir)
        .env("TANDEM_BIN", env!("CARGO_BIN_EXE_tandem"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{program} is needed for the client library's tests: {e}"));
    let output = tokio::time::timeout(CLIENT_TESTS_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish"))
        .expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn the_client_library_passes_its_tests_against_this_server() {
    let out = run("npm", &["test"]).await;
    assert!(out.contains("# fail 0"), "{out}");
    assert!(!out.contains("# pass 0"), "{out}");
}

#[tokio::test]
async fn the_client_library_type_declarations_check() {
    run("npx", &["--no-install", "tsc", "-p", "tsconfig.json"]).await;
}
