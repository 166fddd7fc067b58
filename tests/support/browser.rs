//! A headless Chromium driven over WebDriver, for the tests of the pages
//! wsgate and its demo serve (`tests/dashboard.rs`, `tests/demo_chat.rs`).
//! Included by those files with `#[path]`.
//!
//! Debian's `chromium` and `chromium-driver` packages (`.ci/run` installs
//! them); `WSGATE_CHROMIUM` and `WSGATE_CHROMEDRIVER` point elsewhere. A
//! missing browser fails the test with a message saying so: a browser test
//! that passes without a browser would prove nothing.
//!
//! Each [`Driver`] is one chromedriver on a free loopback port, in a
//! process group of its own, killed with every browser it started when
//! dropped, even after a failed test. Waits poll the DOM with a generous
//! bound: nothing here sleeps and hopes.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// Generous bound on every wait for the browser or the page.
pub const BROWSER_WAIT: Duration = Duration::from_secs(60);

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(100);

fn tool(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.is_file(),
        "browser tests need {} (set {env} to use another path): install Debian's \
         `chromium` and `chromium-driver` packages, as .ci/run does",
        path.display()
    );
    path
}

/// A chromedriver and the browsers it starts.
pub struct Driver {
    child: Child,
    port: u16,
    chromedriver: PathBuf,
    chromium: PathBuf,
    /// chromedriver's log, with the browsers' own output in it: quoted
    /// when no session comes, since that is the only place saying why.
    log: tempfile::TempDir,
    profiles: Vec<tempfile::TempDir>,
}

/// How many browsers of one test binary may be starting at once. The
/// tests of a binary run in parallel, and eight Chromiums starting
/// together on two cores is the load under which CI once saw one never
/// answer its chromedriver ("chrome not reachable").
static STARTING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Attempts at a session, each with a fresh chromedriver, before a test
/// fails: a browser that dies while starting is the machine's hiccup,
/// not the page's fault, and chromedriver itself waits up to a minute
/// for it, so a test gets at most a few such minutes.
const SESSION_ATTEMPTS: usize = 3;

impl Driver {
    /// Starts chromedriver on a free loopback port.
    pub fn start() -> Self {
        let chromium = tool("WSGATE_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = tool("WSGATE_CHROMEDRIVER", "/usr/bin/chromedriver");
        let log = tempfile::tempdir().expect("chromedriver log dir");
        let (child, port) = spawn_chromedriver(&chromedriver, &log);
        Self {
            child,
            port,
            chromedriver,
            chromium,
            log,
            profiles: Vec::new(),
        }
    }

    /// Kills chromedriver and its browsers, and starts a fresh one.
    fn restart(&mut self) {
        self.kill();
        let (child, port) = spawn_chromedriver(&self.chromedriver, &self.log);
        self.child = child;
        self.port = port;
    }

    fn kill(&mut self) {
        // The whole group: chromedriver and every browser process it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }

    /// Opens a new headless browser session (its own profile, so two
    /// sessions are two independent browsers).
    pub async fn session(&mut self) -> Page {
        let _starting = STARTING.acquire().await.expect("never closed");
        let mut failures = Vec::new();
        for attempt in 1..=SESSION_ATTEMPTS {
            if attempt > 1 {
                self.restart();
            }
            match self.try_session().await {
                Ok(client) => return Page { client },
                Err(e) => failures.push(format!("attempt {attempt}: {e}")),
            }
        }
        let log =
            std::fs::read_to_string(self.log.path().join("chromedriver.log")).unwrap_or_default();
        // Its own lines and the browsers', without the JSON it dumps.
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| !l.starts_with([' ', '}']))
            .rev()
            .take(40)
            .collect();
        panic!(
            "no browser session from chromedriver:\n{}\nthe end of its log:\n{}",
            failures.join("\n"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    /// One attempt: waits for chromedriver to listen, then asks it once for
    /// a browser.
    async fn try_session(&mut self) -> Result<Client, fantoccini::error::NewSessionError> {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut args = vec![
            "--headless=new".to_string(),
            // chromedriver talks to the browser over a pipe rather than a
            // port the browser announces in a file: what chromedriver's log
            // calls more reliable, against "chrome not reachable".
            "--remote-debugging-pipe".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            // The machine's network is closed: no background fetches.
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            // Background timers keep running in an unfocused window.
            "--disable-background-timer-throttling".into(),
            "--disable-renderer-backgrounding".into(),
            "--window-size=1400,1000".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        if is_root() {
            // Chromium refuses to start as root with its sandbox.
            args.push("--no-sandbox".into());
        }
        self.profiles.push(profile);
        let caps: serde_json::Map<String, Value> = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": args,
            },
        })
        .as_object()
        .cloned()
        .unwrap_or_default();
        let url = format!("http://127.0.0.1:{}", self.port);
        let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
        loop {
            let mut builder =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            builder.capabilities(caps.clone());
            match builder.connect(&url).await {
                Ok(client) => return Ok(client),
                // chromedriver not listening yet: only a refused connection
                // is worth asking again; a refused session is this attempt's end.
                Err(
                    fantoccini::error::NewSessionError::Failed(_)
                    | fantoccini::error::NewSessionError::FailedC(_),
                ) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// chromedriver on a free loopback port, in a process group of its own,
/// logging (with its browsers' output) into `log`/chromedriver.log.
fn spawn_chromedriver(chromedriver: &Path, log: &tempfile::TempDir) -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // Appended to across restarts, so a failure shows every attempt.
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log.path().join("chromedriver.log"))
        .expect("chromedriver log");
    let err = out.try_clone().expect("chromedriver log");
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        // The browsers' own output too, on chromedriver's stderr.
        .arg("--enable-chrome-logs")
        .arg("--log-level=INFO")
        .stdout(out)
        .stderr(err)
        // Its own group, so dropping it ends the browsers it started too.
        .process_group(0)
        .spawn()
        .expect("start chromedriver");
    (child, port)
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.kill();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// One browser session and its page.
pub struct Page {
    /// The WebDriver client, for anything the helpers do not cover.
    pub client: Client,
}

impl Page {
    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("open the page");
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// The text of the first element matching `css`, if any.
    pub async fn text(&self, css: &str) -> Option<String> {
        let v = self
            .eval(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                vec![json!(css)],
            )
            .await;
        v.as_str().map(str::to_string)
    }

    /// Attribute `name` of the first element matching `css`, if any.
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let v = self
            .eval(
                "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
                vec![json!(css), json!(name)],
            )
            .await;
        v.as_str().map(str::to_string)
    }

    /// Polls `check` until it returns `Some`, failing after [`BROWSER_WAIT`]
    /// with `what` and the page's text.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if tokio::time::Instant::now() >= deadline {
                let body = self.eval("return document.body.innerText;", vec![]).await;
                let body = body.as_str().unwrap_or_default();
                panic!("timed out waiting for {what}; the page shows:\n{body}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the text of `css` satisfies `ok`, and returns it.
    pub async fn wait_text(&self, what: &str, css: &str, ok: impl Fn(&str) -> bool) -> String {
        self.wait_for(what, || async { self.text(css).await.filter(|t| ok(t)) })
            .await
    }

    /// Waits for an element matching `css` and returns it.
    pub async fn element(&self, css: &str) -> Element {
        self.wait_for(&format!("an element {css}"), || async {
            self.client.find(Locator::Css(css)).await.ok()
        })
        .await
    }

    /// Waits for the element `css` and clicks it.
    pub async fn click(&self, css: &str) {
        self.element(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Waits for the input `css`, clears it and types `text`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        e.clear()
            .await
            .unwrap_or_else(|err| panic!("clear {css}: {err}"));
        e.send_keys(text)
            .await
            .unwrap_or_else(|err| panic!("type into {css}: {err}"));
    }

    /// A PNG of the whole window.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("screenshot")
    }

    /// Ends the session (the browser quits).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
