//! README's test command, `./test.sh`: installs what the tests need, or
//! says why it cannot, then runs `cargo test --workspace`.
//!
//! Each case runs the script with a `PATH` of its own holding only `bash`,
//! `dirname` and stand-ins for `id`, `apt-get`, `sudo` and `cargo` that
//! record how they were called, so nothing is installed and no nested test
//! run starts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../test.sh");

/// A directory that is the whole `PATH` of one run of the script.
struct FakePath {
    dir: PathBuf,
}

impl FakePath {
    fn new(case: &str) -> FakePath {
        let dir =
            std::env::temp_dir().join(format!("procpool-setup-{}-{case}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the fake PATH directory");
        for tool in ["bash", "dirname"] {
            let real = which(tool);
            std::os::unix::fs::symlink(&real, dir.join(tool)).expect("linking a real tool");
        }
        FakePath { dir }
    }

    /// A stand-in for `name`: a shell script that logs its arguments to
    /// `<name>.log` and then runs `body`.
    fn tool(&self, name: &str, body: &str) -> &FakePath {
        let log = self.dir.join(format!("{name}.log"));
        let script = format!("#!/bin/sh\necho \"$*\" >> '{}'\n{body}\n", log.display());
        let path = self.dir.join(name);
        std::fs::write(&path, script).expect("writing a fake tool");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("making a fake tool executable");
        self
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(self.dir.join("bash"))
            .arg(SCRIPT)
            .args(args)
            .env_clear()
            .env("PATH", &self.dir)
            .output()
            .expect("running test.sh")
    }
}

impl Drop for FakePath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn which(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(tool))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{tool} is not on the PATH"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Makes `name` appear on the PATH when a fake `apt-get install` runs.
fn installs(dir: &Path) -> String {
    format!(
        "if [ \"$1\" = install ]; then for t in redis-server openssl chromium; do \
         printf '#!/bin/sh\\n' > '{0}'/$t; command -p chmod +x '{0}'/$t; done; fi",
        dir.display()
    )
}

#[test]
fn without_apt_get_it_says_what_to_install_and_runs_nothing() {
    let path = FakePath::new("no-apt");
    path.tool("id", "echo 0").tool("cargo", "");
    let output = path.run(&[]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(message.contains("redis-server openssl"), "{message}");
    assert!(message.contains("no apt-get"), "{message}");
    assert_eq!(path.log("cargo"), "", "cargo ran: {message}");
}

#[test]
fn without_root_or_sudo_it_says_how_to_install() {
    let path = FakePath::new("no-root");
    path.tool("id", "echo 1000")
        .tool("apt-get", "exit 100")
        .tool("cargo", "");
    let output = path.run(&[]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(message.contains("needs root"), "{message}");
    assert!(
        message.contains("apt-get install -y redis-server openssl"),
        "{message}"
    );
    assert_eq!(
        path.log("apt-get"),
        "",
        "apt-get ran without root: {message}"
    );
    assert_eq!(path.log("cargo"), "", "cargo ran: {message}");
}

#[test]
fn a_failed_install_stops_before_the_tests() {
    let path = FakePath::new("apt-fails");
    path.tool("id", "echo 0")
        .tool("apt-get", "exit 100")
        .tool("cargo", "");
    let output = path.run(&[]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(message.contains("could not install"), "{message}");
    // Install, then update and install again: a fresh machine's lists may be empty.
    assert_eq!(
        path.log("apt-get"),
        "install -y redis-server openssl chromium\nupdate\n",
        "{message}"
    );
    assert_eq!(path.log("cargo"), "", "cargo ran: {message}");
}

#[test]
fn as_a_user_with_sudo_it_installs_then_runs_every_test() {
    let path = FakePath::new("sudo");
    let install = installs(&path.dir);
    path.tool("id", "echo 1000")
        .tool("sudo", "exec \"$@\"")
        .tool("apt-get", &install)
        .tool("cargo", "");
    let output = path.run(&["--", "--test-threads=1"]);
    let message = stderr(&output);
    assert!(output.status.success(), "{message}");
    assert_eq!(
        path.log("sudo"),
        "apt-get install -y redis-server openssl chromium\n",
        "{message}"
    );
    assert_eq!(
        path.log("cargo"),
        "test --workspace -- --test-threads=1\n",
        "{message}"
    );
}

#[test]
fn with_everything_installed_it_only_runs_the_tests() {
    let path = FakePath::new("ready");
    path.tool("redis-server", "")
        .tool("openssl", "")
        .tool("chromium", "")
        .tool("id", "echo 1000")
        .tool("apt-get", "exit 100")
        .tool("cargo", "");
    let output = path.run(&[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(path.log("apt-get"), "");
    assert_eq!(path.log("cargo"), "test --workspace\n");
}

#[test]
fn only_what_is_missing_is_installed() {
    let path = FakePath::new("only-chromium");
    let install = installs(&path.dir);
    path.tool("redis-server", "")
        .tool("openssl", "")
        .tool("id", "echo 0")
        .tool("apt-get", &install)
        .tool("cargo", "");
    let output = path.run(&[]);
    let message = stderr(&output);
    assert!(output.status.success(), "{message}");
    assert!(message.contains("the tests need chromium"), "{message}");
    assert_eq!(path.log("apt-get"), "install -y chromium\n", "{message}");
    assert_eq!(path.log("cargo"), "test --workspace\n", "{message}");
}
