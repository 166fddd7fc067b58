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
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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
    chromium: PathBuf,
    profiles: Vec<tempfile::TempDir>,
}

impl Driver {
    /// Starts chromedriver on a free loopback port.
    pub fn start() -> Self {
        let chromium = tool("WSGATE_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = tool("WSGATE_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group, so dropping it ends the browsers it started too.
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        Self {
            child,
            port,
            chromium,
            profiles: Vec::new(),
        }
    }

    /// Opens a new headless browser session (its own profile, so two
    /// sessions are two independent browsers).
    pub async fn session(&mut self) -> Page {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut args = vec![
            "--headless=new".to_string(),
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
                Ok(client) => return Page { client },
                // chromedriver not listening yet.
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => panic!("no browser session from chromedriver at {url}: {e}"),
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and every browser process it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
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
