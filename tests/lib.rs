//! Helpers shared by the integration tests in this package.
//!
//! "No hang" checks poll with generous bounds (seconds), never tight timing.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::time::{Duration, Instant};

/// Polls `condition` every few milliseconds; fails the test after 10 seconds.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `pid` is a running process (a zombie does not count).
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

/// Reads the child's stdout up to a line `PIDS <pid> <pid> ...` and returns the pids.
pub fn read_reported_pids(child: &mut Child) -> Vec<u32> {
    let stdout = child
        .stdout
        .take()
        .expect("the child's stdout must be piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("reading the child's stdout");
        if let Some(rest) = line.strip_prefix("PIDS ") {
            return rest.split(' ').map(|p| p.parse().expect("a pid")).collect();
        }
    }
    panic!("the child exited without reporting its workers' pids");
}

/// A `redis-server` of the test's own on a free loopback port, killed and
/// removed when dropped. Tests start one each, so they run in parallel
/// without sharing state, and a test never depends on a server it did not
/// start (CI installs `redis-server`; nothing is skipped without it).
pub struct RedisServer {
    child: Child,
    port: u16,
    scheme: &'static str,
    dir: std::path::PathBuf,
    /// Every `redis-server` argument, to start it again.
    args: Vec<std::ffi::OsString>,
}

impl RedisServer {
    /// A plain server without a password.
    pub fn start() -> RedisServer {
        RedisServer::with_args(&[], false)
    }

    /// A server with extra `redis-server` arguments; with `tls`, the port
    /// speaks TLS with a certificate from [`RedisServer::tls_dir`]'s CA.
    pub fn with_args(extra: &[&str], tls: bool) -> RedisServer {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "procpool-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a temp dir for redis-server");
        let port = free_port();
        let port_text = port.to_string();
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        let mut arg = |a: &dyn AsRef<std::ffi::OsStr>| args.push(a.as_ref().to_owned());
        for a in ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"] {
            arg(&a);
        }
        for a in ["--protected-mode", "no", "--loglevel", "warning", "--dir"] {
            arg(&a);
        }
        arg(&dir);
        if tls {
            make_certificates(&dir);
            for a in [
                "--port",
                "0",
                "--tls-port",
                &port_text,
                "--tls-auth-clients",
                "no",
            ] {
                arg(&a);
            }
            for (flag, file) in [
                ("--tls-cert-file", "server.crt"),
                ("--tls-key-file", "server.key"),
                ("--tls-ca-cert-file", "ca.crt"),
            ] {
                arg(&flag);
                arg(&dir.join(file));
            }
        } else {
            arg(&"--port");
            arg(&port_text);
        }
        for a in extra {
            arg(a);
        }
        let server = RedisServer {
            child: spawn_redis(&args),
            port,
            scheme: if tls { "rediss" } else { "redis" },
            dir,
            args,
        };
        server.wait_until_listening();
        server
    }

    /// Kills the server and starts a new one on the same port: without
    /// persistence, every key is gone.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_redis(&self.args);
        self.wait_until_listening();
    }

    fn wait_until_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The URL of database 0 with `params` as its query (`queue=x&...`).
    pub fn url(&self, params: &str) -> String {
        self.url_with_password("", params)
    }

    /// Like [`RedisServer::url`], with a password.
    pub fn url_with_password(&self, password: &str, params: &str) -> String {
        let auth = if password.is_empty() {
            String::new()
        } else {
            format!(":{password}@")
        };
        let mut url = format!("{}://{auth}127.0.0.1:{}/0", self.scheme, self.port);
        if !params.is_empty() {
            url = format!("{url}?{params}");
        }
        url
    }

    /// Where the TLS certificates are (`ca.crt` is the CA to trust).
    pub fn tls_dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_redis(args: &[std::ffi::OsString]) -> Child {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new("redis-server");
    command.args(args).stdout(std::process::Stdio::null());
    // SAFETY: prctl is async-signal-safe. The server dies with the test
    // thread that started it, even if the test binary is killed.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot start redis-server ({e}): the cluster tests need it on the PATH; \
             install it with `apt-get install redis-server`"
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl tool.
fn make_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run openssl ({e}); install it with `apt-get install openssl`")
            });
        assert!(status.success(), "openssl {args:?} failed");
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=procpool test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}
