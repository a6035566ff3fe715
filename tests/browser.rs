//! The upload page in a real browser: headless Chromium, driven over WebDriver by
//! chromedriver (Debian's `chromium` and `chromium-driver`, installed by `.ci/run`),
//! uploads `tiger.jpg` and must show "tiger".

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::server_util::{agent, Server};
use crate::util::shared;

/// WebDriver's key for element references in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    process: Child,
    base: String,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (apt-get install chromium chromium-driver)");
        let driver = Driver {
            process,
            base: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(status) = driver.call("GET", "/status", None) {
                if status["value"]["ready"] == true {
                    return driver;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("chromedriver did not become ready");
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let response = match (method, body) {
            ("GET", _) => agent().get(&url).call(),
            ("DELETE", _) => agent().delete(&url).call(),
            (_, body) => agent()
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or(json!({})).to_string()),
        };
        let mut response = response.map_err(|e| e.to_string())?;
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let value: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        if response.status().is_success() {
            Ok(value)
        } else {
            Err(value.to_string())
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[test]
fn the_upload_page_classifies_a_photo_in_chromium() {
    let server = Server::ready(&[], &[]);
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let capabilities = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     format!("--user-data-dir={}", profile.path().display())]
        }
    }}});
    let session = driver
        .call("POST", "/session", Some(capabilities))
        .expect("a browser session");
    let session = session["value"]["sessionId"].as_str().unwrap().to_string();
    let at = |path: &str| format!("/session/{session}{path}");

    driver
        .call("POST", &at("/url"), Some(json!({"url": server.url("/")})))
        .unwrap();
    let find = |css: &str| -> String {
        let found = driver
            .call(
                "POST",
                &at("/element"),
                Some(json!({"using": "css selector", "value": css})),
            )
            .unwrap();
        found["value"][ELEMENT_KEY].as_str().unwrap().to_string()
    };
    let input = find("#file");
    let tiger = shared()
        .join("data/photos/tiger.jpg")
        .canonicalize()
        .unwrap();
    driver
        .call(
            "POST",
            &at(&format!("/element/{input}/value")),
            Some(json!({"text": tiger.to_str().unwrap()})),
        )
        .unwrap();

    let started = Instant::now();
    let mut shown = String::new();
    while started.elapsed() < Duration::from_secs(60) {
        let results = find("#results");
        shown = driver
            .call("GET", &at(&format!("/element/{results}/text")), None)
            .unwrap()["value"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if !shown.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = driver.call("DELETE", &at(""), None);
    let first_line = shown.lines().next().unwrap_or("");
    assert!(first_line.starts_with("tiger"), "the page shows {shown:?}");
    assert!(
        shown.contains('%'),
        "scores shown as percentages: {shown:?}"
    );
}
