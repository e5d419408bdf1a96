//! The console in a real headless browser (Debian's chromium, driven over WebDriver by
//! chromedriver): open the console on a populated DLQ, filter by error class, open a message,
//! redrive the filtered set, and check on the main topic that exactly those messages came back.
//! Screenshots go to target/console-*.png. Skipped, saying so, where chromedriver is missing
//! (scripts/test installs it: scripts/lib/browser.sh).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::console_fixture::*;
use base64::Engine as _;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

/// A chromedriver process and one headless browser session in it.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start(driver: &Path, chromium: &Path) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut b = Browser {
            driver: child,
            base,
            session: String::new(),
            http,
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"]
            }
        }}});
        let v = b.call("POST", "/session", Some(caps)).await;
        b.session = v["sessionId"].as_str().expect("a session").to_string();
        b
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body.unwrap_or(json!({})).to_string()),
        };
        let text = req
            .send()
            .await
            .expect("webdriver call")
            .text()
            .await
            .unwrap();
        let v: Value = serde_json::from_str(&text).expect("webdriver JSON");
        if v["value"]["error"].is_string() {
            panic!("webdriver {method} {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    async fn s(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    async fn open(&self, url: &str) {
        self.s("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// The element `css` selects, waiting for it to appear (pages reload on their own).
    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + T;
        loop {
            let url = format!("{}/session/{}/element", self.base, self.session);
            let body = json!({"using": "css selector", "value": css}).to_string();
            let text = self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap_or_default();
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if let Some(id) = v["value"]
                .as_object()
                .filter(|o| !o.contains_key("error"))
                .and_then(|o| o.values().next())
                .and_then(Value::as_str)
            {
                return id.to_string();
            }
            assert!(Instant::now() < deadline, "no {css} on the page");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The text of the element `css` selects. The job page reloads itself every second, so an
    /// element found just before a reload is stale when read: find it again (bounded).
    async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + T;
        loop {
            let id = self.find(css).await;
            let url = format!("{}/session/{}/element/{id}/text", self.base, self.session);
            let body = self.http.get(url).send().await.unwrap().text().await;
            let v: Value = serde_json::from_str(&body.unwrap_or_default()).unwrap_or(Value::Null);
            match v["value"]["error"].as_str() {
                None => return v["value"].as_str().unwrap_or_default().to_string(),
                Some("stale element reference") if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Some(e) => panic!("webdriver text of {css}: {e}: {}", v["value"]),
            }
        }
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.s("POST", &format!("/element/{id}/click"), Some(json!({})))
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.s("POST", &format!("/element/{id}/clear"), Some(json!({})))
            .await;
        self.s(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn wait_text(&self, css: &str, want: &str) {
        let deadline = Instant::now() + T;
        loop {
            let got = self.text(css).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} says {got:?}, not {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let b64 = self.s("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("a PNG");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("console-{name}.png")), png).unwrap();
    }

    async fn url(&self) -> String {
        self.s("GET", "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until the page's address ends with `suffix` (a click's navigation is asynchronous).
    async fn wait_url(&self, suffix: &str) {
        let deadline = Instant::now() + T;
        loop {
            let url = self.url().await;
            if url.ends_with(suffix) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page stayed at {url}, not …{suffix}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_filters_opens_a_message_and_redrives_the_filtered_set_in_a_browser() {
    let (Some(driver), Some(chromium)) = (
        which(&["chromedriver"]),
        which(&["chromium", "chromium-browser"]),
    ) else {
        eprintln!(
            "SKIPPED: chromium and chromedriver are not installed (scripts/test installs Debian's \
             chromium and chromium-driver); the console's browser test did not run"
        );
        return;
    };
    let topo = populated("console-browser").await;
    let mut cfg = console_cfg(&topo, &unique("svc"));
    cfg.allow_replay = true;
    let console = start_console(cfg).await;
    let base = console.url.clone();
    let b = Browser::start(&driver, &chromium).await;

    b.open(&format!("{base}/")).await;
    b.wait_text("#dlq-total", "6").await;
    b.screenshot("topology").await;

    // Filter by error class.
    b.click("#dlq-total").await;
    b.wait_text("#total", "6").await;
    b.type_into("#f-error_class", "http_503").await;
    b.click("#apply-filter").await;
    b.wait_text("#matched", "3").await;
    b.screenshot("dead-letters").await;

    // Open a message.
    b.click("a.msg").await;
    let key = b.text("#key").await;
    assert!(key.starts_with("key-a"), "a http_503 message: {key}");
    assert!(b.text("#payload").await.ends_with(":payload"));
    b.screenshot("message").await;

    // Back to the filtered list; redrive what it selects: dry run, confirm, progress, summary.
    b.open(&format!("{base}/dlq?error_class=http_503")).await;
    b.click("#redrive-filtered").await;
    b.wait_text("#would", "3").await;
    b.screenshot("redrive-dry-run").await;
    b.click("#confirm").await;
    b.wait_url("/redrive/job").await;
    b.find("#job-summary").await;
    b.wait_text("#redriven", "3").await;
    b.screenshot("redrive-done").await;
    let _ = b.s("DELETE", "", None).await;

    assert_eq!(
        ids_in(&topo.main, 4, Duration::from_secs(5)),
        vec!["a0", "a1", "a2"],
        "exactly the filtered messages came back"
    );
}
