//! Test support: a throwaway PostgreSQL server ([`TestPostgres`]), so the PostgreSQL
//! backend is tested against the real thing on any machine with Debian's `postgresql`
//! binaries (no mocks, no shared server).
//!
//! - The binaries are found on `PATH` (`initdb`, `pg_ctl`, `postgres`) or under
//!   `/usr/lib/postgresql/*/bin/` (the newest version).
//! - The server is initialized (`initdb`, trust authentication, superuser `postgres`) into
//!   a temporary directory and listens on 127.0.0.1 on a free ephemeral port (never 5432),
//!   with its socket in that directory and `fsync=on`.
//! - Running as root (PostgreSQL refuses to), the server runs as the `postgres` system
//!   user through `runuser`.
//! - [`TestPostgres::shared`] is one server for the whole test process; each test makes
//!   its own database with [`TestPostgres::create_database`]. A watchdog process stops the
//!   server and removes its directory when the test process exits, however it exits.
//! - When `HERALD_TEST_PG_URL` is set (`postgres://user:pw@host:port/db`), the shared
//!   server is that one instead, and each test still gets a database of its own (named
//!   `herald_test_…`; they are left behind). Tests that must stop the server or change its
//!   settings start a [`TestPostgres::local`] server of their own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// The environment variable naming an existing server to test against.
pub const TEST_PG_URL_VAR: &str = "HERALD_TEST_PG_URL";

/// Why a test server could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TestPostgresError {
    #[error(
        "PostgreSQL binaries not found: need initdb and pg_ctl on PATH or under \
         /usr/lib/postgresql/*/bin (Debian: apt-get install postgresql), or set {TEST_PG_URL_VAR}"
    )]
    NotFound,
    #[error("cannot run {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed: {output}")]
    Failed { command: String, output: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("cannot create a test database: {0}")]
    Database(String),
    #[error("this operation needs a local server, not {TEST_PG_URL_VAR}")]
    NotLocal,
}

/// A PostgreSQL server for tests: local and throwaway, or the one `HERALD_TEST_PG_URL`
/// names.
pub struct TestPostgres {
    kind: Kind,
}

enum Kind {
    Local(Local),
    External { url: String },
}

struct Local {
    spec: Arc<Spec>,
    /// Holds the data directory; removed on drop.
    dir: Option<tempfile::TempDir>,
    watchdog: Option<Child>,
    /// The CA certificate (PEM) that signed the server's, when it offers TLS.
    root_cert: Option<PathBuf>,
}

/// What it takes to run `pg_ctl` on this server again.
struct Spec {
    bin: PathBuf,
    root: PathBuf,
    port: u16,
    run_as: Option<String>,
    settings: Vec<String>,
}

impl TestPostgres {
    /// The server shared by every test of this process: `HERALD_TEST_PG_URL`'s, or a
    /// local one started on first use.
    ///
    /// # Panics
    /// When no server can be had (the message says why).
    pub fn shared() -> &'static TestPostgres {
        static SHARED: OnceLock<TestPostgres> = OnceLock::new();
        SHARED.get_or_init(|| match std::env::var(TEST_PG_URL_VAR) {
            Ok(url) if !url.trim().is_empty() => TestPostgres {
                kind: Kind::External {
                    url: url.trim().to_owned(),
                },
            },
            _ => TestPostgres::local(&[]).unwrap_or_else(|e| panic!("{e}")),
        })
    }

    /// Starts a local server of its own, with extra `name=value` settings (`-c` options).
    pub fn local(settings: &[&str]) -> Result<Self, TestPostgresError> {
        Self::start_local(settings, false)
    }

    /// Like [`TestPostgres::local`], and the server offers TLS (`ssl=on`) with a
    /// certificate for `localhost` and `127.0.0.1`, signed by a throwaway CA whose
    /// certificate [`TestPostgres::root_cert`] names (both made with the `openssl` command).
    pub fn local_with_tls(settings: &[&str]) -> Result<Self, TestPostgresError> {
        Self::start_local(settings, true)
    }

    fn start_local(settings: &[&str], tls: bool) -> Result<Self, TestPostgresError> {
        let bin = find_binaries().ok_or(TestPostgresError::NotFound)?;
        let dir = tempfile::Builder::new().prefix("herald-pg-").tempdir()?;
        let root = dir.path().to_path_buf();
        let run_as = if running_as_root(&root)? {
            let user = "postgres".to_owned();
            hand_over(&root, &user)?;
            Some(user)
        } else {
            None
        };
        let mut spec = Spec {
            bin,
            root,
            port: 0,
            run_as,
            settings: settings.iter().map(|s| s.to_string()).collect(),
        };
        spec.run(
            "initdb",
            &[
                "-D",
                &spec.data().to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        let root_cert = if tls {
            Some(spec.make_certificates()?)
        } else {
            None
        };
        let mut last_error = None;
        for _ in 0..5 {
            spec.port = free_port()?;
            match spec.start() {
                Ok(()) => {
                    last_error = None;
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        if let Some(e) = last_error {
            return Err(e);
        }
        let watchdog = spawn_watchdog(&spec.root).ok();
        Ok(TestPostgres {
            kind: Kind::Local(Local {
                spec: Arc::new(spec),
                dir: Some(dir),
                watchdog,
                root_cert,
            }),
        })
    }

    /// The CA certificate (a PEM file) that signed the server's certificate, for
    /// `sslrootcert=`: `Some` for a server from [`TestPostgres::local_with_tls`].
    pub fn root_cert(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Local(local) => local.root_cert.as_deref(),
            Kind::External { .. } => None,
        }
    }

    /// True when this is the server `HERALD_TEST_PG_URL` names.
    pub fn is_external(&self) -> bool {
        matches!(self.kind, Kind::External { .. })
    }

    /// The URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        match &self.kind {
            Kind::Local(local) => format!(
                "postgres://postgres@127.0.0.1:{}/{database}",
                local.spec.port
            ),
            Kind::External { url } => with_database(url, database),
        }
    }

    /// The URL of the maintenance database (`postgres`), for administration.
    pub fn admin_url(&self) -> String {
        match &self.kind {
            Kind::Local(_) => self.url("postgres"),
            Kind::External { url } => url.clone(),
        }
    }

    /// Creates an empty database with a unique name and returns its URL.
    pub async fn create_database(&self) -> Result<String, TestPostgresError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "herald_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        self.execute(&format!("CREATE DATABASE \"{name}\"")).await?;
        Ok(self.url(&name))
    }

    /// Runs SQL on the maintenance database (e.g. `ALTER DATABASE …`).
    pub async fn execute(&self, sql: &str) -> Result<(), TestPostgresError> {
        let url = self.admin_url();
        let db_error = |e: tokio_postgres::Error| TestPostgresError::Database(e.to_string());
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .map_err(db_error)?;
        let driver = tokio::spawn(connection);
        let result = client.batch_execute(sql).await.map_err(db_error);
        drop(client);
        let _ = driver.await;
        result
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`), as a crash would.
    pub async fn stop(&self) -> Result<(), TestPostgresError> {
        let spec = self.spec()?;
        tokio::task::spawn_blocking(move || spec.stop())
            .await
            .expect("pg_ctl stop task")
    }

    /// Starts the server again on the same port (after [`TestPostgres::stop`]).
    pub async fn start(&self) -> Result<(), TestPostgresError> {
        let spec = self.spec()?;
        tokio::task::spawn_blocking(move || spec.start())
            .await
            .expect("pg_ctl start task")
    }

    /// Freezes the server and every backend (SIGSTOP): to clients it looks hung, like a
    /// machine that stopped answering. Undo with [`TestPostgres::thaw`].
    pub async fn freeze(&self) -> Result<(), TestPostgresError> {
        let spec = self.spec()?;
        tokio::task::spawn_blocking(move || spec.signal_all("STOP"))
            .await
            .expect("freeze task")
    }

    /// Lets a frozen server run again (SIGCONT).
    pub async fn thaw(&self) -> Result<(), TestPostgresError> {
        let spec = self.spec()?;
        tokio::task::spawn_blocking(move || spec.signal_all("CONT"))
            .await
            .expect("thaw task")
    }

    fn spec(&self) -> Result<Arc<Spec>, TestPostgresError> {
        match &self.kind {
            Kind::Local(local) => Ok(local.spec.clone()),
            Kind::External { .. } => Err(TestPostgresError::NotLocal),
        }
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Kind::Local(local) = &mut self.kind {
            let _ = local.spec.signal_all("CONT");
            let _ = local.spec.stop();
            if let Some(mut watchdog) = local.watchdog.take() {
                let _ = watchdog.kill();
                let _ = watchdog.wait();
            }
            drop(local.dir.take());
        }
    }
}

impl Spec {
    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Makes a CA and, signed by it, a certificate for `localhost` and `127.0.0.1` (ECDSA
    /// P-256, valid two days), and has the server use it. Returns the CA's certificate.
    fn make_certificates(&mut self) -> Result<PathBuf, TestPostgresError> {
        let file = |name: &str| self.root.join(name).to_string_lossy().into_owned();
        let (ca_key, ca_cert) = (file("ca.key"), file("ca.crt"));
        let (key, request, cert) = (file("server.key"), file("server.csr"), file("server.crt"));
        let extensions = self.root.join("server.ext");
        std::fs::write(
            &extensions,
            "basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = serverAuth\n\
             subjectAltName = DNS:localhost, IP:127.0.0.1\n",
        )?;
        let openssl = Path::new("openssl");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        self.run_program(
            openssl,
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-days",
                    "2",
                    "-subj",
                    "/CN=Herald test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                    "-keyout",
                    &ca_key,
                    "-out",
                    &ca_cert,
                ],
            ]
            .concat(),
        )?;
        self.run_program(
            openssl,
            &[
                &["req"][..],
                &ec,
                &["-subj", "/CN=localhost", "-keyout", &key, "-out", &request],
            ]
            .concat(),
        )?;
        self.run_program(
            openssl,
            &[
                "x509",
                "-req",
                "-in",
                &request,
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-set_serial",
                "2",
                "-days",
                "2",
                "-extfile",
                &extensions.to_string_lossy(),
                "-out",
                &cert,
            ],
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        self.settings.extend([
            "ssl=on".to_owned(),
            format!("ssl_cert_file={cert}"),
            format!("ssl_key_file={key}"),
        ]);
        Ok(self.root.join("ca.crt"))
    }

    fn start(&self) -> Result<(), TestPostgresError> {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
            self.port,
            self.root.display()
        );
        for setting in &self.settings {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-l",
                &self.root.join("server.log").to_string_lossy(),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        )
        .map(|_| ())
        .map_err(|e| match e {
            TestPostgresError::Failed { command, output } => {
                let log = std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                TestPostgresError::Failed {
                    command,
                    output: format!(
                        "{output}\nserver log (last lines, newest first):\n{}",
                        tail.join("\n")
                    ),
                }
            }
            other => other,
        })
    }

    fn stop(&self) -> Result<(), TestPostgresError> {
        if !self.data().join("postmaster.pid").exists() {
            return Ok(());
        }
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
        .map(|_| ())
    }

    /// Sends `signal` to the postmaster (first) and then to each of its children, by pid.
    fn signal_all(&self, signal: &str) -> Result<(), TestPostgresError> {
        let pid_file = std::fs::read_to_string(self.data().join("postmaster.pid"))?;
        let postmaster = pid_file
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        if postmaster.parse::<u32>().is_err() {
            return Err(TestPostgresError::Failed {
                command: "read postmaster.pid".into(),
                output: pid_file,
            });
        }
        let children = Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .map_err(|source| TestPostgresError::Spawn {
                command: format!("pgrep -P {postmaster}"),
                source,
            })?;
        let kill = |pids: &[&str]| {
            Command::new("kill")
                .arg(format!("-{signal}"))
                .args(pids)
                .stderr(Stdio::null())
                .status()
                .map_err(|source| TestPostgresError::Spawn {
                    command: "kill".into(),
                    source,
                })
        };
        let status = kill(&[&postmaster])?;
        if !status.success() {
            return Err(TestPostgresError::Failed {
                command: format!("kill -{signal} {postmaster}"),
                output: status.to_string(),
            });
        }
        // A backend may exit between pgrep and kill: that one needs no signal.
        let children = String::from_utf8_lossy(&children.stdout).to_string();
        let children: Vec<&str> = children.split_whitespace().collect();
        if !children.is_empty() {
            kill(&children)?;
        }
        Ok(())
    }

    /// Runs one of the server's programs, as the server's user.
    fn run(&self, program: &str, args: &[&str]) -> Result<Output, TestPostgresError> {
        self.run_program(&self.bin.join(program), args)
    }

    /// Runs `path` as the server's user.
    fn run_program(&self, path: &Path, args: &[&str]) -> Result<Output, TestPostgresError> {
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        command
            .args(args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .env("LC_ALL", "C");
        let shown = format!("{} {}", path.display(), args.join(" "));
        let output = command
            .output()
            .map_err(|source| TestPostgresError::Spawn {
                command: shown.clone(),
                source,
            })?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(TestPostgresError::Failed {
                command: shown,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            })
        }
    }
}

/// The directory holding `initdb` and `pg_ctl`: from `PATH`, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn find_binaries() -> Option<PathBuf> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| dir.join(p).is_file())
    };
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_all(&dir) {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_all(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Whether this process runs as root: a directory it just made belongs to uid 0.
fn running_as_root(dir: &Path) -> Result<bool, TestPostgresError> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(dir)?.uid() == 0)
}

/// Gives `dir` to `user`, who will run the server.
fn hand_over(dir: &Path, user: &str) -> Result<(), TestPostgresError> {
    let id = |flag: &str| -> Result<u32, TestPostgresError> {
        let output = Command::new("id")
            .args([flag, user])
            .output()
            .map_err(|source| TestPostgresError::Spawn {
                command: format!("id {flag} {user}"),
                source,
            })?;
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .map_err(|_| TestPostgresError::Failed {
                command: format!("id {flag} {user}"),
                output: format!(
                    "running as root needs a `{user}` user to run PostgreSQL: {}",
                    String::from_utf8_lossy(&output.stderr)
                ),
            })
    };
    std::os::unix::fs::chown(dir, Some(id("-u")?), Some(id("-g")?))?;
    Ok(())
}

/// A port that was free a moment ago (the kernel's pick for port 0).
fn free_port() -> Result<u16, TestPostgresError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A process that outlives this one just long enough to stop the server and remove its
/// directory once this process has exited (even by a panic that aborts, or a kill).
fn spawn_watchdog(root: &Path) -> std::io::Result<Child> {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; \
         if [ -f '{root}/data/postmaster.pid' ]; then \
           kill -QUIT \"$(head -n 1 '{root}/data/postmaster.pid')\" 2>/dev/null; sleep 1; \
         fi; rm -rf '{root}'",
        pid = std::process::id(),
        root = root.display(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// `url` with its database (the path) replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A tmpfs of a given size mounted on a fresh directory, unmounted on drop: a disk to
/// fill up. `None` where this process may not mount (not root, or no CAP_SYS_ADMIN).
pub struct SmallDisk {
    pub dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g. `"3m"`).
    pub fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(SmallDisk { dir })
    }

    /// Gives it a new size: room again, or less of it.
    pub fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .expect("mount runs");
        assert!(status.success(), "remounting {size}");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A disk that fails syncs on demand: a small library, loaded into a child process with
/// `LD_PRELOAD` ([`FailingSync::env`]), makes `fsync` and `fdatasync` fail with `EIO`
/// between [`FailingSync::fail`] and [`FailingSync::heal`], as a dying disk does. `None`
/// where no C compiler (`cc`) can build it.
pub struct FailingSync {
    dir: tempfile::TempDir,
}

impl FailingSync {
    /// The variable naming the file whose presence makes syncs fail.
    pub const TRIGGER_VAR: &'static str = "HERALD_FAIL_SYNC_WHEN";

    pub fn build() -> Option<FailingSync> {
        let dir = tempfile::tempdir().ok()?;
        let source = dir.path().join("fail_sync.c");
        std::fs::write(&source, include_str!("../testdata/fail_sync.c")).ok()?;
        let built = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(dir.path().join("libfail_sync.so"))
            .arg(&source)
            .status()
            .ok()?;
        built.success().then_some(FailingSync { dir })
    }

    /// The environment of a process whose syncs this controls.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "LD_PRELOAD".into(),
                self.dir
                    .path()
                    .join("libfail_sync.so")
                    .display()
                    .to_string(),
            ),
            (
                Self::TRIGGER_VAR.into(),
                self.trigger().display().to_string(),
            ),
        ]
    }

    /// [`FailingSync::run_child_test`] with a fresh directory in the variable `dir_var`
    /// (and `env` besides); skipped, saying so, where no C compiler can build the
    /// library.
    pub fn run_in_child(test: &str, dir_var: &str, env: &[(&str, &std::ffi::OsStr)]) {
        let Some(failing) = FailingSync::build() else {
            eprintln!("SKIPPED: no C compiler to build the failing-sync library");
            return;
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut all = vec![(dir_var, dir.path().as_os_str())];
        all.extend_from_slice(env);
        failing.run_child_test(test, &all);
    }

    /// Runs the ignored test `test` (its full path) of the current test binary in a child
    /// process whose syncs this controls, with `env` besides; panics with the child's
    /// output unless it ran and passed.
    pub fn run_child_test(&self, test: &str, env: &[(&str, &std::ffi::OsStr)]) {
        let output = Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "--exact",
                test,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .envs(self.env())
            .envs(env.iter().copied())
            .output()
            .expect("run the child test");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "the child test {test} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Every sync fails from now on.
    pub fn fail(&self) {
        std::fs::write(self.trigger(), b"").expect("create the trigger file");
    }

    /// Syncs work again.
    pub fn heal(&self) {
        std::fs::remove_file(self.trigger()).expect("remove the trigger file");
    }

    fn trigger(&self) -> PathBuf {
        self.dir.path().join("fail-syncs")
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_of_a_url() {
        assert_eq!(
            with_database("postgres://u:p@h:5/old?sslmode=disable", "new"),
            "postgres://u:p@h:5/new?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "new"), "postgres://h/new");
    }
}
