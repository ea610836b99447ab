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
    child: Option<Child>,
    port: u16,
    /// `--port`, or `--tls-port` for a TLS server.
    port_flag: &'static str,
    scheme: &'static str,
    dir: std::path::PathBuf,
    /// Every `redis-server` argument but the port, to start it again.
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
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        let mut arg = |a: &dyn AsRef<std::ffi::OsStr>| args.push(a.as_ref().to_owned());
        for a in ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"] {
            arg(&a);
        }
        // `notice` logs the line that says the server is listening.
        for a in ["--protected-mode", "no", "--loglevel", "notice", "--dir"] {
            arg(&a);
        }
        arg(&dir);
        arg(&"--logfile");
        arg(&dir.join("redis.log"));
        if tls {
            make_certificates(&dir);
            for a in ["--port", "0", "--tls-auth-clients", "no"] {
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
        }
        for a in extra {
            arg(a);
        }
        let port_flag = if tls { "--tls-port" } else { "--port" };
        // A free port may be taken by another test's server before this one
        // binds it; that start fails, and another port is tried.
        for _ in 0..20 {
            let port = free_port();
            let mut server = RedisServer {
                child: None,
                port,
                port_flag,
                scheme: if tls { "rediss" } else { "redis" },
                dir: dir.clone(),
                args: args.clone(),
            };
            if server.launch() {
                return server;
            }
        }
        panic!(
            "redis-server did not start on any of 20 free ports; see {}",
            dir.display()
        );
    }

    /// Starts the server on its port; false if it exited (the port was taken).
    fn launch(&mut self) -> bool {
        let log = self.dir.join("redis.log");
        let _ = std::fs::remove_file(&log);
        let mut command_args = self.args.clone();
        command_args.push(self.port_flag.into());
        command_args.push(self.port.to_string().into());
        let mut child = spawn_redis(&command_args);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Ready to accept connections") {
                self.child = Some(child);
                return true;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server did not start within 10 s; its log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server and starts a new one on the same port: without
    /// persistence, every key is gone.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.launch(),
            "redis-server could not start again on port {}",
            self.port
        );
    }

    /// Kills the server: clients find nothing listening any more.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
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

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_redis(args: &[std::ffi::OsString]) -> Child {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new("redis-server");
    command
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
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

/// A CA (`ca.crt`), a server certificate for 127.0.0.1 (`server.crt`,
/// `server.key`) and a client certificate (`client.crt`, `client.key`),
/// made with the openssl tool.
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
        dir.join("server.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.cnf"), "extendedKeyUsage=clientAuth\n").unwrap();
    let key = ["-newkey", "rsa:2048", "-nodes", "-days", "2"];
    run(&[
        &["req", "-x509"],
        &key[..],
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=procpool test CA",
        ],
    ]
    .concat());
    for (name, subject) in [
        ("server", "/CN=localhost"),
        ("client", "/CN=procpool test client"),
    ] {
        let (key_file, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.cnf"),
        );
        run(&[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key_file, "-out", &csr, "-subj",
            subject,
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
}

/// A Redis Cluster of three masters on free loopback ports, made with
/// `redis-server --cluster-enabled yes` and `redis-cli --cluster create`;
/// every node is killed when dropped.
pub struct RedisCluster {
    /// The nodes, in the order they were started (`redis-cli` makes the
    /// first three the masters).
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three masters without replicas.
    pub fn start() -> RedisCluster {
        RedisCluster::with_replicas(0, 5000)
    }

    /// Three masters, each with `replicas` replicas in sync with it; a
    /// replica takes over `node_timeout_ms` after its master stops
    /// answering (`cluster-node-timeout`).
    pub fn with_replicas(replicas: usize, node_timeout_ms: u32) -> RedisCluster {
        let timeout = node_timeout_ms.to_string();
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                RedisServer::with_args(
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        &timeout,
                    ],
                    false,
                )
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let output = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-cli ({e}); install it with `apt-get install redis-tools`")
            });
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cli = |port: u16, args: &[&str]| {
            std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string()])
                .args(args)
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                .unwrap_or_default()
        };
        for node in &nodes {
            eventually("the cluster to be ready on every node", || {
                cli(node.port(), &["cluster", "info"]).contains("cluster_state:ok")
            });
            // Replicas in sync, so that one can take over from its master.
            eventually("every replica to be in sync", || {
                let info = cli(node.port(), &["info", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            });
        }
        RedisCluster { nodes }
    }
}

/// Children of this process that are zombies (exited, not reaped).
pub fn zombie_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|entry| {
                    let entry = entry.ok()?;
                    let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                    let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                    // After the command's closing parenthesis: state, then ppid.
                    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split_whitespace();
                    (fields.next()? == "Z" && fields.next()? == me).then_some(pid)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The descriptors of this process that are sockets.
pub fn own_sockets() -> Vec<i32> {
    std::fs::read_dir("/proc/self/fd")
        .map(|entries| {
            entries
                .filter_map(|entry| {
                    let entry = entry.ok()?;
                    let target = std::fs::read_link(entry.path()).ok()?;
                    target
                        .to_string_lossy()
                        .starts_with("socket:")
                        .then_some(())?;
                    entry.file_name().to_str()?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Appends `line` and a newline to the file at `path` in one `write`
/// (O_APPEND), so that lines from several worker processes never
/// interleave (`writeln!` may write the text and the newline apart).
pub fn append_line(path: impl AsRef<std::path::Path>, line: impl std::fmt::Display) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(format!("{line}\n").as_bytes()))
        .unwrap();
}
