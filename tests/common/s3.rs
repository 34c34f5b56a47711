//! A real S3-compatible server for the tests: `s3s-fs` (installed by
//! scripts/install-deps.sh) on a free loopback port, with its own data
//! directory, credentials that it checks (SigV4), and one bucket. A missing
//! binary or a server that does not come up fails the test: it never skips.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Access key the server accepts.
pub const ACCESS_KEY: &str = "clipTestAccessKey";
/// Secret key the server accepts.
pub const SECRET_KEY: &str = "clipTestSecretKey0123456789";
/// The bucket created at start.
pub const BUCKET: &str = "clip-test";

/// A running `s3s-fs`; stopped (and its data removed) on drop.
pub struct S3Server {
    child: Child,
    /// The server's data directory (one sub-directory per bucket).
    pub root: tempfile::TempDir,
    /// Endpoint URL, `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
    {
        return p;
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let p = home.join(".cargo/bin/s3s-fs");
    assert!(
        p.is_file(),
        "s3s-fs not found on PATH or in ~/.cargo/bin: run scripts/install-deps.sh \
         (the S3 tests need a real S3-compatible server)"
    );
    p
}

impl S3Server {
    /// Starts the server with bucket [`BUCKET`]; panics if it does not come up.
    pub fn start() -> S3Server {
        let root = tempfile::Builder::new()
            .prefix("clip-s3-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir(root.path().join(BUCKET)).expect("bucket dir");
        // A free port: bind, read it, release it for the server.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let mut server = S3Server {
            child,
            root,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("s3s-fs exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not listen on {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// `s3://BUCKET/key`.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{BUCKET}/{key}")
    }

    /// clipctl with this server's endpoint and credentials (and no AWS
    /// settings of the machine leaking in).
    pub fn clipctl(&self) -> Command {
        let mut c = super::clipctl();
        isolate(&mut c);
        c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_ENDPOINT_URL", &self.endpoint);
        c
    }

    /// Runs clipctl with `args` against this server.
    pub fn run(&self, args: &[&str]) -> Output {
        self.clipctl().args(args).output().expect("spawn clipctl")
    }

    /// Path of an object in the server's data directory.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }
}

/// Clears AWS settings from the environment of `c`.
pub fn isolate(c: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
